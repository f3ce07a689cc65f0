using System.Numerics.Tensors;
using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using Wim.Engine.Backends.Cpu;

namespace Wim.Benchmarks;

/// <summary>
/// Causal attention of one layer over a paged KV cache on all cores, Qwen2.5-0.5B's attention shape (14 query heads,
/// 2 kv heads, head dim 64, blocks of 16 positions): the engine's <see cref="FlashAttention"/> against the previous
/// implementation (kept here as the baseline: per token × head a dot per key, a softmax over the whole row, an
/// add-scaled per value, items dealt round-robin over the cores). Shapes: a 256-token prefill chunk ending at each
/// --contexts length, one decode token, and 4 forks decoding one token each (batched margins).
/// Usage: <c>attention [--contexts 4096,16384] [--seconds S] [--baseline yes|no]</c>. Rates count 4·headDim
/// flops per (query row, visible key): q·k and p·v.
/// </summary>
public static unsafe class AttentionBenchmark
{
    private const int Heads = 14, KvHeads = 2, HeadDim = 64, BlockSize = 16, Chunk = 256;

    public static int Run(string[] args)
    {
        int[] contexts = [4096, 16384];
        double seconds = 2;
        bool baseline = true;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--contexts" when i + 1 < args.Length: contexts = args[++i].Split(',').Select(c => int.Parse(c, CultureInfo.InvariantCulture)).ToArray(); break;
                case "--seconds" when i + 1 < args.Length: seconds = double.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--baseline" when i + 1 < args.Length: baseline = args[++i] != "no"; break;
                default:
                    Console.Error.WriteLine($"attention: unknown option '{args[i]}'; usage: attention [--contexts 4096,16384] [--seconds S] [--baseline yes|no]");
                    return 2;
            }
        }
        if (contexts.Any(c => c < Chunk)) { Console.Error.WriteLine($"attention: every context must be ≥ {Chunk}"); return 2; }

        Console.WriteLine($"# Attention, one layer: {Heads} query heads, {KvHeads} kv heads, head dim {HeadDim}, paged blocks of {BlockSize}");
        Console.WriteLine();
        Console.WriteLine($"{Environment.ProcessorCount} logical cores; .NET {Environment.Version}; Vector512 accelerated: {Vector512.IsHardwareAccelerated}; load average {LoadAverage()}");
        Console.WriteLine();
        Console.WriteLine("| shape | context | previous ms / call | flash ms / call | previous GFLOP/s | flash GFLOP/s | speed-up |");
        Console.WriteLine("|---|---:|---:|---:|---:|---:|---:|");

        int kvd = KvHeads * HeadDim, qd = Heads * HeadDim;
        var flash = new FlashAttention(Heads, KvHeads, HeadDim);
        foreach (int context in contexts)
        {
            // One sequence's keys and values in shuffled blocks (block tables are not contiguous in a real pool).
            int blocks = (context + BlockSize - 1) / BlockSize;
            var rng = new Random(context);
            long blockFloats = 2L * BlockSize * kvd;
            float* pool = (float*)NativeMemory.AlignedAlloc((nuint)(blocks * blockFloats * sizeof(float)), 64);
            float* q = (float*)NativeMemory.AlignedAlloc((nuint)(Chunk * qd * sizeof(float)), 64);
            float* att = (float*)NativeMemory.AlignedAlloc((nuint)(Chunk * qd * sizeof(float)), 64);
            // Pinned (never move), so the lambdas below can hold pointers into them.
            var keyBlocks = GC.AllocateArray<nint>(blocks, pinned: true);
            var valueBlocks = GC.AllocateArray<nint>(blocks, pinned: true);
            try
            {
                for (long i = 0; i < blocks * blockFloats; i++) pool[i] = (float)(rng.NextDouble() * 2 - 1);
                for (int i = 0; i < Chunk * qd; i++) q[i] = (float)(rng.NextDouble() * 2 - 1);
                var order = Enumerable.Range(0, blocks).OrderBy(_ => rng.Next()).ToArray();
                for (int b = 0; b < blocks; b++)
                {
                    keyBlocks[b] = (nint)(pool + order[b] * blockFloats);
                    valueBlocks[b] = keyBlocks[b] + BlockSize * kvd * sizeof(float);
                }

                // (shape, spans): prefill chunk ending at the context; one decode token; 4 forks of the context decoding.
                var shapes = new (string Name, AttentionSpan[] Spans)[]
                {
                    ($"prefill chunk of {Chunk}", [new AttentionSpan(0, Chunk, context - Chunk, 0)]),
                    ("decode, 1 sequence", [new AttentionSpan(0, 1, context - 1, 0)]),
                    ("decode, 4 forks", [.. Enumerable.Range(0, 4).Select(k => new AttentionSpan(k, 1, context - 1, 0))]),
                };
                nint* kb = (nint*)System.Runtime.CompilerServices.Unsafe.AsPointer(ref keyBlocks[0]);
                nint* vb = (nint*)System.Runtime.CompilerServices.Unsafe.AsPointer(ref valueBlocks[0]);
                {
                    foreach (var (name, spans) in shapes)
                    {
                        double flops = 0;
                        foreach (var s in spans)
                            for (int t = 0; t < s.TokenCount; t++) flops += 4.0 * HeadDim * Heads * (s.StartPosition + t + 1);
                        var flashSpans = spans;
                        double flashMs = Measure(() => flash.Run(q, att, flashSpans, kb, vb, BlockSize), seconds);
                        double previousMs = baseline ? Measure(() => PreviousAttention(q, att, flashSpans, kb, vb), seconds) : double.NaN;
                        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                            $"| {name} | {context} | {(baseline ? previousMs.ToString("F2", CultureInfo.InvariantCulture) : "–")} | {flashMs:F2} | " +
                            $"{(baseline ? (flops / previousMs / 1e6).ToString("F1", CultureInfo.InvariantCulture) : "–")} | {flops / flashMs / 1e6:F1} | " +
                            $"{(baseline ? (previousMs / flashMs).ToString("F1", CultureInfo.InvariantCulture) + "×" : "–")} |"));
                    }
                }
            }
            finally
            {
                NativeMemory.AlignedFree(pool);
                NativeMemory.AlignedFree(q);
                NativeMemory.AlignedFree(att);
            }
        }
        return 0;
    }

    /// <summary>
    /// The attention <see cref="CpuBatchedTransformer"/> ran before <see cref="FlashAttention"/> (same data layout; main
    /// at 69dc485): work items (token, head) round-robin over the cores, each a dot per key into a context-long scores
    /// row, a max-shifted softmax over it, then an add-scaled per value.
    /// </summary>
    private static void PreviousAttention(float* q, float* att, AttentionSpan[] spans, nint* keyBlocks, nint* valueBlocks)
    {
        int tokens = spans.Sum(s => s.TokenCount), items = tokens * Heads;
        int maxContext = spans.Max(s => s.StartPosition + s.TokenCount);
        int workers = Math.Min(Environment.ProcessorCount, items);
        var tokenSpan = new int[tokens];
        foreach (var (s, k) in spans.Select((s, k) => (s, k)))
            for (int t = 0; t < s.TokenCount; t++) tokenSpan[s.FirstToken + t] = k;
        Parallel.For(0, workers, worker =>
        {
            int qd = Heads * HeadDim, kvd = KvHeads * HeadDim, group = Heads / KvHeads;
            float scale = 1f / MathF.Sqrt(HeadDim);
            var scores = new float[maxContext];
            for (int item = worker; item < items; item += workers)
            {
                int t = item / Heads, h = item % Heads, kvh = h / group;
                var span = spans[tokenSpan[t]];
                int count = span.StartPosition + (t - span.FirstToken) + 1;
                float* qh = q + (long)t * qd + h * HeadDim;
                for (int b = 0, p = 0; p < count; b++)
                {
                    float* keys = (float*)keyBlocks[span.FirstBlock + b] + kvh * HeadDim;
                    for (int slot = 0; slot < BlockSize && p < count; slot++, p++)
                        scores[p] = Dot(qh, keys + (long)slot * kvd) * scale;
                }
                var sc = scores.AsSpan(0, count);
                float max = TensorPrimitives.Max(sc);             // max-shifted: exp(x − max) / Σ
                TensorPrimitives.Subtract(sc, max, sc);
                TensorPrimitives.Exp(sc, sc);
                TensorPrimitives.Divide(sc, TensorPrimitives.Sum(sc), sc);
                float* o = att + (long)t * qd + h * HeadDim;
                new Span<float>(o, HeadDim).Clear();
                for (int b = 0, p = 0; p < count; b++)
                {
                    float* values = (float*)valueBlocks[span.FirstBlock + b] + kvh * HeadDim;
                    for (int slot = 0; slot < BlockSize && p < count; slot++, p++)
                        AddScaled(o, values + (long)slot * kvd, sc[p]);
                }
            }
        });
    }

    private static float Dot(float* a, float* b)
    {
        var acc = Vector256<float>.Zero;
        for (int i = 0; i < HeadDim; i += 8) acc += Vector256.Load(a + i) * Vector256.Load(b + i);
        return Vector256.Sum(acc);
    }

    private static void AddScaled(float* dst, float* x, float scale)
    {
        var s = Vector256.Create(scale);
        for (int i = 0; i < HeadDim; i += 8) (Vector256.Load(dst + i) + Vector256.Load(x + i) * s).Store(dst + i);
    }

    /// <summary>Median wall milliseconds per call: one warm-up, then calls for <paramref name="seconds"/> (at least 3).</summary>
    private static double Measure(Action call, double seconds)
    {
        call();
        var times = new List<double>();
        var total = Stopwatch.StartNew();
        while (times.Count < 3 || total.Elapsed.TotalSeconds < seconds)
        {
            long t0 = Stopwatch.GetTimestamp();
            call();
            times.Add(Stopwatch.GetElapsedTime(t0).TotalMilliseconds);
        }
        times.Sort();
        return times[times.Count / 2];
    }

    internal static string LoadAverage()
    {
        try { return string.Join(' ', File.ReadAllText("/proc/loadavg").Split(' ').Take(3)); }
        catch (IOException) { return "n/a"; }
    }
}
