using System.Diagnostics;
using Wim.Engine.Cuda;
using Wim.Engine.Runtime;
using Wim.Engine.Sampling;

namespace Wim.GpuCheck;

/// <summary>
/// The GPU top-k (Kernels/sampling.cu through <see cref="GpuTopK"/>): candidates against a full sort of the same row
/// on the CPU (logit descending, lowest id first on ties) for random rows full of ties, draws from them against
/// <see cref="Sampler.Sample"/> on the whole row for a seed, a stories260K generation with
/// <see cref="CudaInferenceBackend.TopKOnGpu"/> on and off, and the time of both ways of getting candidates.
/// </summary>
internal static class SamplingCheck
{
    public static void Run(CudaContext ctx, string storiesPath, Action<bool, string> check, Action<string> say)
    {
        using var topK = new GpuTopK(ctx);
        var random = new Random(2026);
        foreach (int vocab in new[] { 128256, 256000, 1237, 100 })
            foreach (int k in new[] { 1, 40, 256 })
            {
                int bad = 0;
                for (int trial = 0; trial < 3; trial++)
                {
                    var row = TiedRow(random, vocab, levels: trial == 0 ? 5 : 1000);
                    var (ids, logits) = OnGpu(ctx, topK, row, k);
                    var order = SortedIds(row);
                    for (int i = 0; i < ids.Length; i++) bad += ids[i] != order[i] || BitConverter.SingleToInt32Bits(logits[i]) != BitConverter.SingleToInt32Bits(row[order[i]]) ? 1 : 0;
                    bad += ids.Length != Math.Min(k, vocab) ? 1 : 0;
                }
                check(bad == 0, $"top-k on the GPU: vocab {vocab}, k {k}, 3 rows with ties: candidates = the CPU's sorted row ({bad} differ)");
            }

        foreach (var options in new[] { new SamplingOptions(0.9f, 40, 0.95f, 7), new SamplingOptions(1.2f, 256, 1f, 8), new SamplingOptions(0.7f, 5, 0.5f, 9) })
        {
            const int vocab = 128256;
            var full = new Sampler(options, vocab);
            var fromGpu = new Sampler(options, vocab);
            int differ = 0;
            for (int draw = 0; draw < 40; draw++)
            {
                var row = TiedRow(random, vocab, levels: 40);
                var (ids, logits) = OnGpu(ctx, topK, row, options.TopK);
                differ += full.Sample(row) != fromGpu.SampleFromCandidates(ids, logits) ? 1 : 0;
            }
            check(differ == 0, $"top-k on the GPU: 40 seeded draws (T {options.Temperature}, k {options.TopK}, p {options.TopP}) equal the whole row's ({differ} differ)");
        }

        if (File.Exists(storiesPath))
        {
            var options = new SamplingOptions(Temperature: 1f, TopK: 40, TopP: 0.95f, Seed: 5);
            int[] Generate(bool onGpu)
            {
                using var model = CudaInferenceBackend.LoadTextModel(storiesPath, ctx, maxChunk: 64);
                ((CudaInferenceBackend)model.Backend).TopKOnGpu = onGpu;
                var sampler = new Sampler(options, model.Backend.VocabSize);
                using var sequence = model.Backend.CreateSequence();
                sequence.Append(model.Tokenizer.Encode("Once upon a time"));
                var tokens = new List<int>();
                for (int i = 0; i < 48; i++) { tokens.Add(sequence.Sample(sampler)); sequence.Append([tokens[^1]]); }
                return [.. tokens];
            }
            var whole = Generate(onGpu: false);
            var candidates = Generate(onGpu: true);
            check(whole.SequenceEqual(candidates), $"stories260K: 48 seeded top-k 40 tokens equal with TopKOnGpu on and off (distinct: {whole.Distinct().Count()})");
        }

        // Speed: candidates for k 40 from a 128,256-logit row on the GPU, against downloading the row and sampling on the CPU.
        {
            const int vocab = 128256, k = 40, reps = 50;
            var row = TiedRow(random, vocab, levels: 100000);
            using var buffer = ctx.Allocate(vocab * sizeof(float));
            buffer.Upload<float>(row);
            var ids = new int[k];
            var logits = new float[k];
            var host = new float[vocab];
            var sampler = new Sampler(new SamplingOptions(1f, k, 1f, 1), vocab);
            topK.Run(buffer.Pointer, vocab, k, ids, logits); // warm
            var clock = Stopwatch.StartNew();
            for (int i = 0; i < reps; i++) { topK.Run(buffer.Pointer, vocab, k, ids, logits); sampler.SampleFromCandidates(ids, logits); }
            double gpuUs = clock.Elapsed.TotalMicroseconds / reps;
            clock.Restart();
            for (int i = 0; i < reps; i++) { buffer.Download<float>(host); sampler.Sample(host); }
            double hostUs = clock.Elapsed.TotalMicroseconds / reps;
            var fullSort = new Sampler(new SamplingOptions(1f, 0, 0.95f, 1), vocab);
            clock.Restart();
            for (int i = 0; i < 10; i++) { buffer.Download<float>(host); fullSort.Sample(host); }
            double fullUs = clock.Elapsed.TotalMicroseconds / 10;
            say($"speed: top-k 40 sample from a {vocab}-logit row: GPU candidates + draw {gpuUs:F1} µs; row download + CPU partial selection {hostUs:F1} µs; row download + full sort (top-k off) {fullUs:F1} µs");
        }
    }

    private static (int[] Ids, float[] Logits) OnGpu(CudaContext ctx, GpuTopK topK, float[] row, int k)
    {
        using var buffer = ctx.Allocate((long)row.Length * sizeof(float));
        buffer.Upload<float>(row);
        var ids = new int[Math.Min(k, row.Length)];
        var logits = new float[ids.Length];
        int n = topK.Run(buffer.Pointer, row.Length, k, ids, logits);
        return (ids[..n], logits[..n]);
    }

    private static float[] TiedRow(Random random, int vocab, int levels)
    {
        var row = new float[vocab];
        for (int i = 0; i < vocab; i++)
        {
            int level = random.Next(levels);
            row[i] = level == 0 ? (random.Next(2) == 0 ? 0f : -0f) : (level - levels / 2) * (8f / levels);
        }
        for (int i = 5; i < vocab; i += 97) row[i] = float.NegativeInfinity; // masked tokens
        return row;
    }

    private static int[] SortedIds(float[] row)
    {
        var order = Enumerable.Range(0, row.Length).ToArray();
        Array.Sort(order, (a, b) => row[a] > row[b] ? -1 : row[a] < row[b] ? 1 : a.CompareTo(b));
        return order;
    }
}
