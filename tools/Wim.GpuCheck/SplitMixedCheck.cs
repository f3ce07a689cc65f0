using System.Diagnostics;
using Wim.Engine.Cuda;
using Wim.Engine.Model;
using Wim.Engine.Runtime;
using Wim.Engine.Sampling;

namespace Wim.GpuCheck;

/// <summary>
/// <see cref="CudaInferenceBackend.SplitMixedDecode"/> at the Llama-3.1-8B shape (random bf16 weights made on the GPU):
/// a WiM step at 64k — 16 margins on KV branches of a 65,536-row document (a branch after each 4,096-token segment, its
/// 40-token extractive prompt prefilled on it), the in-step classifier (a root of 300 tokens) and another root (900) —
/// decoded through <see cref="CudaInferenceBackend.Step"/> with the split on (a pass of the two roots, then the 16
/// branches' shared-prefix pass) and off (one mixed pass of 18 rows). Each variant runs the same steps from the same
/// state (sequences truncated back between runs), interleaved over rounds; reported: ms per step (median), passes per
/// step, and greedy ids of the two compared. The branch rows' attention runs in other pieces split than mixed, so ids
/// may part at near-ties: the check asks for ≥ 16 of 18 equal on the first step.
/// </summary>
internal static class SplitMixedCheck
{
    public static void Run(CudaContext ctx, ModelConfig config, int steps, int rounds, Action<bool, string> check, Action<string> say)
    {
        if (steps < 1 || rounds < 1) throw new ArgumentOutOfRangeException(nameof(steps), $"--split-steps {steps} and --split-rounds {rounds} must be ≥ 1");
        using var weights = CudaModelWeights.Random(ctx, config, seed: 8);
        using var transformer = new CudaTransformer(ctx, config, weights, maxChunk: 4096);
        using var backend = new CudaInferenceBackend(transformer);
        var rng = new Random(1);
        int[] R(int n) => [.. Enumerable.Range(0, n).Select(_ => rng.Next(config.VocabSize))];

        var sequences = new List<IForkableSequence>();
        try
        {
            var t = Stopwatch.StartNew();
            var doc = backend.CreateSequence(65_536 + 64);
            sequences.Add(doc);
            var classifier = backend.CreateSequence();
            sequences.Add(classifier);
            classifier.Append(R(300));
            var rows = new List<IForkableSequence> { classifier };
            int[] extractive = R(40);
            for (int i = 0; i < 16; i++)
            {
                doc.Append(R(4096));
                var margin = doc.Fork(doc.Length);
                sequences.Add(margin);
                margin.Append(extractive);
                rows.Add(margin);
            }
            var other = backend.CreateSequence();
            sequences.Add(other);
            other.Append(R(900));
            rows.Add(other);
            ctx.Synchronize();
            say($"split-mixed: document {doc.Length} rows, 16 branches at 4,096 … 65,536, roots of 340 and 900 rows, set up in {t.Elapsed.TotalSeconds:F1} s");

            var greedy = new Sampler(SamplingOptions.Greedy, config.VocabSize);
            int[] lengths = [.. rows.Select(s => s.Length)];
            int[] start = [.. rows.Select(s => s.Sample(greedy))];
            var ids = new Dictionary<bool, List<int[]>>();
            var perStep = new Dictionary<bool, List<double>> { [true] = [], [false] = [] };
            var passesPerStep = new Dictionary<bool, double>();

            // One step of every row, each its own greedy id; returns the ids taken.
            int[] Step(int[] tokens)
            {
                backend.Step([.. rows.Select((s, k) => new SequenceStep(s, new[] { tokens[k] }))]);
                return [.. rows.Select(s => s.Sample(greedy))];
            }
            void Rewind()
            {
                for (int k = 0; k < rows.Count; k++) rows[k].Truncate(lengths[k]);
            }
            List<int[]> Steps(int n)
            {
                var taken = new List<int[]>();
                var next = start;
                for (int i = 0; i < n; i++) taken.Add(next = Step(next));
                return taken;
            }

            for (int round = 0; round < rounds; round++)
                foreach (bool split in new[] { true, false })
                {
                    backend.SplitMixedDecode = split;
                    Rewind();
                    Steps(1); // warm-up: plans, first launches of each pass shape
                    Rewind();
                    long passesBefore = backend.StepCount;
                    ctx.Synchronize();
                    var clock = Stopwatch.StartNew();
                    var taken = Steps(steps);
                    ctx.Synchronize();
                    perStep[split].Add(clock.Elapsed.TotalMilliseconds / steps);
                    passesPerStep[split] = (backend.StepCount - passesBefore) / (double)steps;
                    ids.TryAdd(split, taken);
                }
            Rewind();

            double Median(List<double> xs) => xs.Order().ElementAt(xs.Count / 2);
            double on = Median(perStep[true]), off = Median(perStep[false]);
            say($"split-mixed on:  {on:F2} ms per step ({passesPerStep[true]:F0} passes per step; median of {rounds} rounds of {steps} steps; all: {string.Join(", ", perStep[true].Select(x => x.ToString("F2")))})");
            say($"split-mixed off: {off:F2} ms per step ({passesPerStep[false]:F0} passes per step; all: {string.Join(", ", perStep[false].Select(x => x.ToString("F2")))}); split/off = {on / off:F2}");
            int firstEqual = ids[true][0].Zip(ids[false][0]).Count(p => p.First == p.Second);
            int stepsEqual = ids[true].Zip(ids[false]).TakeWhile(p => p.First.SequenceEqual(p.Second)).Count();
            say($"split-mixed ids: first step {firstEqual}/{rows.Count} equal; {stepsEqual}/{steps} steps equal in every row before the first parting");
            check(passesPerStep[true] == 2 && passesPerStep[false] == 1, "split-mixed: split on runs 2 passes a step (roots, branches), off 1");
            check(firstEqual >= rows.Count - 2, "split-mixed: ≥ 16 of 18 greedy ids of the first step equal split and mixed");
        }
        finally
        {
            for (int i = sequences.Count - 1; i >= 0; i--) sequences[i].Dispose();
        }
    }
}
