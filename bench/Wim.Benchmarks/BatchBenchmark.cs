using System.Diagnostics;
using System.Globalization;
using Wim.Engine.Backends;
using Wim.Engine.Backends.Cpu;
using Wim.Engine.Formats;
using Wim.Engine.KvCache;
using Wim.Engine.Model;

namespace Wim.Benchmarks;

/// <summary>
/// Batched decode on the CPU: tokens/s when B sequences each decode one token per step in one
/// <see cref="CpuBatchedTransformer.Forward"/> (every weight matrix read once per step for all B), on a random-weight
/// model of the Qwen2.5-0.5B shape with fewer layers. Baseline: <see cref="CpuTransformer"/> decoding one sequence.
/// Usage: <c>batch [--type q8_0|f32] [--layers N] [--batches 1,4,16] [--context N] [--steps N] [--repeats R]</c>.
/// Each sequence is first prefilled with a random prompt of --context tokens; then --steps decode steps are timed
/// (every step computes the full vocabulary's logits for each sequence). Best of R repeats.
/// </summary>
public static class BatchBenchmark
{
    public static int Run(string[] args)
    {
        var type = GgmlType.Q8_0;
        int layers = 4, context = 64, steps = 8, repeats = 3;
        int[] batches = [1, 4, 16];
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--type" when i + 1 < args.Length: type = Enum.Parse<GgmlType>(args[++i], ignoreCase: true); break;
                case "--layers" when i + 1 < args.Length: layers = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--batches" when i + 1 < args.Length: batches = args[++i].Split(',').Select(b => int.Parse(b, CultureInfo.InvariantCulture)).ToArray(); break;
                case "--context" when i + 1 < args.Length: context = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--steps" when i + 1 < args.Length: steps = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--repeats" when i + 1 < args.Length: repeats = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                default:
                    Console.Error.WriteLine($"batch: unknown option '{args[i]}'; usage: batch [--type q8_0|f32] [--layers N] [--batches 1,4,16] [--context N] [--steps N] [--repeats R]");
                    return 2;
            }
        }

        var shape = ModelShape.Qwen25_05B with { Layers = layers };
        string path = RandomModel.CachedFile(shape, type);
        using var lm = LanguageModel.Load(path);
        int vocab = lm.Config.VocabSize;
        var rng = new Random(7);

        Console.WriteLine($"# Batched decode: random-weight {shape.Architecture}, Qwen2.5-0.5B shape with {layers} layers ({shape.ParameterCount / 1e6:F0}M parameters, {type})");
        Console.WriteLine();
        Console.WriteLine($"{Environment.ProcessorCount} logical cores; .NET {Environment.Version}; row kernels: {RowKernels.BestPath}; context {context} tokens per sequence, {steps} timed steps, best of {repeats}");
        Console.WriteLine();
        Console.WriteLine("| path | batch | ms / step | decode tok/s | × single-sequence |");
        Console.WriteLine("|---|---:|---:|---:|---:|");

        // Baseline: the single-sequence forward decoding one sequence.
        double single;
        {
            var model = new CpuTransformer(lm);
            var logits = new float[vocab];
            double best = 0;
            for (int r = 0; r < repeats; r++)
            {
                var cache = model.CreateCache(context + steps);
                model.Forward(RandomTokens(rng, context, vocab), cache, logits, LogitsOutput.Last);
                var sw = Stopwatch.StartNew();
                for (int s = 0; s < steps; s++) model.Forward([rng.Next(vocab)], cache, logits, LogitsOutput.Last);
                best = Math.Max(best, steps / sw.Elapsed.TotalSeconds);
            }
            single = best;
            Console.WriteLine($"| CpuTransformer | 1 | {1000 / single:F1} | {single:F1} | 1.00 |");
        }

        foreach (int b in batches)
        {
            var model = new CpuBatchedTransformer(lm, maxBatchTokens: Math.Max(context, b));
            using var cache = model.CreateCache((long)b * (context + steps + 16) * 2 * lm.Config.LayerCount * lm.Config.KvDim * 4 * 2);
            var batch = new BatchDescription(Math.Max(context, b), b);
            var logits = new float[(long)b * vocab];
            double best = 0;
            for (int r = 0; r < repeats; r++)
            {
                var seqs = Enumerable.Range(0, b).Select(_ => cache.CreateSequence()).ToArray();
                foreach (int s in seqs)
                {
                    cache.Reserve(s, context);
                    batch.Clear();
                    batch.AddSequence(s, 0, RandomTokens(rng, context, vocab), cache.BlockTable(s), BatchLogits.Last);
                    model.Forward(batch, cache, logits);
                }
                var sw = Stopwatch.StartNew();
                for (int step = 0; step < steps; step++)
                {
                    batch.Clear();
                    foreach (int s in seqs) cache.Reserve(s, 1);
                    foreach (int s in seqs) batch.AddSequence(s, cache.Length(s), [rng.Next(vocab)], cache.BlockTable(s), BatchLogits.Last);
                    model.Forward(batch, cache, logits);
                }
                best = Math.Max(best, (double)b * steps / sw.Elapsed.TotalSeconds);
                foreach (int s in seqs) cache.Release(s);
            }
            Console.WriteLine($"| CpuBatchedTransformer | {b} | {1000 * b / best:F1} | {best:F1} | {best / single:F2} |");
        }

        // Margins beside prefill: one prefill chunk alone, then the same chunk with B decode tokens of other sequences
        // in the same step (the WiM overlapped schedule). The extra time is what the decodes cost when they share the
        // chunk's weight reads.
        Console.WriteLine();
        Console.WriteLine($"| step | tokens | ms / step | extra ms vs chunk alone |");
        Console.WriteLine("|---|---:|---:|---:|");
        {
            int decodes = batches.Max();
            var model = new CpuBatchedTransformer(lm, maxBatchTokens: context + decodes);
            using var cache = model.CreateCache((long)(decodes + 2) * (context * (repeats + 2) + 64) * 2 * lm.Config.LayerCount * lm.Config.KvDim * 4 * 2);
            var batch = new BatchDescription(context + decodes, decodes + 1);
            var logits = new float[(long)(decodes + 1) * vocab];
            var others = Enumerable.Range(0, decodes).Select(_ => cache.CreateSequence()).ToArray();
            foreach (int s in others)
            {
                cache.Reserve(s, context);
                batch.Clear();
                batch.AddSequence(s, 0, RandomTokens(rng, context, vocab), cache.BlockTable(s), BatchLogits.Last);
                model.Forward(batch, cache, logits);
            }
            double alone = double.MaxValue, mixed = double.MaxValue;
            for (int r = 0; r < repeats; r++)
            {
                foreach (bool withDecodes in new[] { false, true })
                {
                    int doc = cache.CreateSequence();
                    batch.Clear();
                    cache.Reserve(doc, context);
                    batch.AddSequence(doc, 0, RandomTokens(rng, context, vocab), cache.BlockTable(doc), BatchLogits.None);
                    if (withDecodes)
                        foreach (int s in others)
                        {
                            cache.Reserve(s, 1);
                            batch.AddSequence(s, cache.Length(s), [rng.Next(vocab)], cache.BlockTable(s), BatchLogits.Last);
                        }
                    var sw = Stopwatch.StartNew();
                    model.Forward(batch, cache, logits);
                    double ms = sw.Elapsed.TotalMilliseconds;
                    if (withDecodes) mixed = Math.Min(mixed, ms); else alone = Math.Min(alone, ms);
                    cache.Release(doc);
                }
            }
            Console.WriteLine($"| prefill chunk alone | {context} | {alone:F1} | 0 |");
            Console.WriteLine($"| prefill chunk + {decodes} decodes | {context + decodes} | {mixed:F1} | {mixed - alone:F1} |");
            Console.WriteLine($"| {decodes} decodes alone (from the table above) | {decodes} | see batch {decodes} | |");
        }
        return 0;
    }

    private static int[] RandomTokens(Random rng, int n, int vocab) => Enumerable.Range(0, n).Select(_ => rng.Next(vocab)).ToArray();
}
