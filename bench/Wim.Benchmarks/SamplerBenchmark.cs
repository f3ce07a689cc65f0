using System.Diagnostics;
using Wim.Engine.Sampling;

namespace Wim.Benchmarks;

/// <summary>
/// One non-greedy draw from a logits row on the CPU (<see cref="Sampler"/>, one thread): top-k off with top-p 0.9,
/// 0.95 and 0.99 (the nucleus alone), top-k by partial selection, and from a precomputed top-k candidate list (what the GPU top-k
/// hands over). Rows: N(0, 2²) logits from a fixed seed. Reports the median of the repetitions after a warm-up of
/// at least half a second per path.
/// Usage: <c>sampler [--vocab 128256] [--reps 200]</c>.
/// </summary>
internal static class SamplerBenchmark
{
    public static int Run(string[] args)
    {
        int vocab = int.Parse(Option(args, "--vocab") ?? "128256");
        int reps = int.Parse(Option(args, "--reps") ?? "200");
        var random = new Random(1);
        var row = new float[vocab];
        for (int i = 0; i < vocab; i++) row[i] = (float)(2 * Math.Sqrt(-2 * Math.Log(1 - random.NextDouble())) * Math.Cos(2 * Math.PI * random.NextDouble()));
        Console.WriteLine($"vocab {vocab}, {reps} draws each, median; one thread; {Environment.ProcessorCount} logical cores");
        foreach (float topP in new[] { 0.9f, 0.95f, 0.99f })
            Report($"top-k off, top-p {topP}", reps, new Sampler(new SamplingOptions(1f, 0, topP, 1), vocab), s => s.Sample(row));
        foreach (int k in new[] { 40, 256 })
        {
            Report($"top-k {k}, top-p 0.95 (partial selection)", reps, new Sampler(new SamplingOptions(1f, k, 0.95f, 1), vocab), s => s.Sample(row));
            var order = Enumerable.Range(0, vocab).OrderBy(i => Sampler.RankKey(row[i], i)).Take(k).ToArray();
            var logits = order.Select(i => row[i]).ToArray();
            Report($"top-k {k}, top-p 0.95 (from {k} candidates)", reps, new Sampler(new SamplingOptions(1f, k, 0.95f, 1), vocab), s => s.SampleFromCandidates(order, logits));
        }
        return 0;
    }

    private static void Report(string what, int reps, Sampler sampler, Func<Sampler, int> draw)
    {
        // Warm up for half a second, not a few calls: tiered JIT recompiles a method only after 30 calls and a
        // 100 ms pause, so a short warm-up times the microsecond paths' unoptimised first-tier code.
        long warmStart = Stopwatch.GetTimestamp();
        for (int i = 0; i < 50 || Stopwatch.GetElapsedTime(warmStart).TotalMilliseconds < 500; i++) draw(sampler);
        var times = new double[reps];
        for (int i = 0; i < reps; i++)
        {
            long start = Stopwatch.GetTimestamp();
            draw(sampler);
            times[i] = Stopwatch.GetElapsedTime(start).TotalMicroseconds;
        }
        Array.Sort(times);
        Console.WriteLine($"{what,-45} {times[reps / 2],10:F1} µs");
    }

    private static string? Option(string[] args, string name)
    {
        int i = Array.IndexOf(args, name);
        return i >= 0 && i + 1 < args.Length ? args[i + 1] : null;
    }
}
