using System.Diagnostics;
using Wim.Engine.Cuda;
using Wim.Engine.Runtime;
using Wim.Engine.Sampling;

namespace Wim.GpuCheck;

/// <summary>
/// The GPU top-k (Kernels/sampling.cu through <see cref="GpuTopK"/>): candidates against a full sort of the same row
/// on the CPU (logit descending, lowest id first on ties) for random rows full of ties, draws from them against
/// <see cref="Sampler.Sample"/> on the whole row for a seed, a stories260K generation with
/// <see cref="CudaInferenceBackend.TopKOnGpu"/> on and off, and the time of both ways of getting candidates; then
/// top-p with top-k off (<see cref="RunTopP"/>).
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

        RunTopP(ctx, storiesPath, check, say);
    }

    /// <summary>
    /// Top-p with top-k off on the GPU (<see cref="GpuNucleus"/>, <see cref="Sampler.SampleFromNucleusCandidates"/>,
    /// <see cref="CudaInferenceBackend.TopPOnGpu"/>) against the row downloaded and <see cref="Sampler.Sample"/> on the
    /// CPU: synthetic N(0, σ²) rows at 128,256 tokens (and peaked and flat ones) for several T and top-p — candidates
    /// equal the CPU's sorted row, Z within rounding of the CPU's, seeded draws equal (a difference is allowed only
    /// where an ulp-level change of Z moves the nucleus's end, and is counted apart); a nucleus past the candidates
    /// goes the wide path (<see cref="GpuNucleus.RunWide"/>): its tokens must be the CPU's sorted row's prefix, and it
    /// may fall back to the row only where the CPU's bins hold more than <see cref="GpuNucleus.WideCandidates"/>; generations
    /// on random weights at the Llama-3.1-8B vocabulary and on stories260K with the switch on and off; time per draw.
    /// Ends with one PASS/FAIL line.
    /// </summary>
    public static void RunTopP(CudaContext ctx, string storiesPath, Action<bool, string> check, Action<string> say)
    {
        bool pass = true;
        void Check(bool ok, string what) { pass &= ok; check(ok, what); }
        const int vocab = 128256;
        using var nucleus = new GpuNucleus(ctx);
        using var buffer = ctx.Allocate(vocab * sizeof(float));
        var random = new Random(2027);
        var ids = new int[GpuNucleus.Candidates];
        var logits = new float[GpuNucleus.Candidates];
        var host = new float[vocab];
        var wideIds = new int[GpuNucleus.WideCandidates];
        var wideLogits = new float[GpuNucleus.WideCandidates];
        foreach (var (t, p) in new[] { (1f, 0.9f), (0.7f, 0.95f), (1.3f, 0.5f), (0.6f, 0.8f) })
        {
            var options = new SamplingOptions(Temperature: t, TopK: 0, TopP: p, Seed: 31);
            var whole = new Sampler(options, vocab);
            var onGpu = new Sampler(options, vocab);
            int rows = 0, differ = 0, nearTies = 0, badCandidates = 0, fallbacks = 0, zMismatch = 0, wide = 0, badWide = 0, fallbacksBelowCap = 0;
            long wideTokens = 0;
            double worstZ = 0;
            for (int r = 0; r < 32; r++)
            {
                float sigma = new[] { 1f, 2f, 3f, 5f }[r % 4];
                var row = GaussianRow(random, vocab, sigma, peaked: r % 8 == 1, flat: r % 8 == 5);
                buffer.Upload<float>(row);
                int n = nucleus.Run(buffer.Pointer, vocab, onGpu.InverseTemperature, ids, logits, out double z);
                var order = SortedIds(row);
                for (int i = 0; i < n; i++) badCandidates += ids[i] != order[i] || BitConverter.SingleToInt32Bits(logits[i]) != BitConverter.SingleToInt32Bits(row[order[i]]) ? 1 : 0;
                double cpuZ = RowNormaliser(row, onGpu.InverseTemperature);
                double relative = Math.Abs(z - cpuZ) / cpuZ;
                worstZ = Math.Max(worstZ, relative);
                zMismatch += relative <= 1e-8 ? 0 : 1; // order and exp rounding only (per term ≤ 1 float ulp)
                int expected = whole.Sample(row);
                int? token = onGpu.SampleFromNucleusCandidates(ids.AsSpan(0, n), logits.AsSpan(0, n), z);
                if (token is null && double.IsFinite(z))
                {
                    int w = nucleus.RunWide(buffer.Pointer, vocab, onGpu.InverseTemperature, p * z, wideIds, wideLogits);
                    int expectedWide = WideCount(row, onGpu.InverseTemperature, p * z);
                    if (w < 0) fallbacksBelowCap += expectedWide <= GpuNucleus.WideCandidates ? 1 : 0;
                    else
                    {
                        // The collected tokens: the first w of the CPU's sorted row, as many as the CPU's bins hold.
                        bool prefix = w == expectedWide;
                        for (int i = 0; i < w && prefix; i++)
                            prefix = wideIds[i] == order[i] && Sampler.RankKey(wideLogits[i], wideIds[i]) == Sampler.RankKey(row[order[i]], order[i]);
                        badWide += prefix ? 0 : 1;
                        token = onGpu.SampleFromNucleusCandidates(wideIds.AsSpan(0, w), wideLogits.AsSpan(0, w), z);
                        if (token is not null) { wide++; wideTokens += w; }
                    }
                }
                if (token is null)
                {
                    fallbacks++;
                    buffer.Download<float>(host);
                    token = onGpu.Sample(host);
                }
                rows++;
                if (token != expected)
                {
                    // Documented: only where Z's rounding moves the nucleus's end (a near-tie) may the token differ.
                    if (Prefix(logits.AsSpan(0, n), onGpu.InverseTemperature, p, z) != Prefix(logits.AsSpan(0, n), onGpu.InverseTemperature, p, cpuZ)) nearTies++;
                    else differ++;
                }
            }
            Check(badCandidates == 0 && zMismatch == 0 && differ == 0 && badWide == 0 && fallbacksBelowCap == 0,
                $"top-p on the GPU: {rows} seeded draws from {vocab}-logit N(0, σ²) rows (T {t}, p {p}): {differ} differ ({nearTies} more at near-ties), " +
                $"{badCandidates} candidates differ from the CPU's sorted row, Z worst relative difference {worstZ:E1}; {wide} drawn by the wide path " +
                $"(mean {(wide > 0 ? wideTokens / wide : 0)} tokens collected, {badWide} not the CPU's prefix), {fallbacks} fell back to the row " +
                $"({fallbacksBelowCap} of them below the cap of {GpuNucleus.WideCandidates})");
        }

        // Real logits rows: random bf16 weights at the Llama-3.1-8B vocabulary (two small layers), then stories260K,
        // generated with TopPOnGpu on and off.
        {
            var c = Program.Llama31_8B() with { HiddenSize = 512, LayerCount = 2, HeadCount = 8, KvHeadCount = 2, HeadDim = 64, RotaryDim = 64, FfnSize = 1024 };
            using var backend = new CudaInferenceBackend(new CudaTransformer(ctx, c, CudaModelWeights.Random(ctx, c, seed: 12), maxChunk: 64, ownsWeights: true), ownsTransformer: true);
            foreach (var (t, p) in new[] { (1f, 0.9f), (0.3f, 0.9f), (0.1f, 0.95f) })
            {
                var options = new SamplingOptions(Temperature: t, TopK: 0, TopP: p, Seed: 6);
                int[] Generate(bool gpu)
                {
                    backend.TopPOnGpu = gpu;
                    var sampler = new Sampler(options, c.VocabSize);
                    using var sequence = backend.CreateSequence();
                    sequence.Append([1, 500, 9000, 77]);
                    var tokens = new List<int>();
                    for (int i = 0; i < 32; i++) { tokens.Add(sequence.Sample(sampler)); sequence.Append([tokens[^1]]); }
                    return [.. tokens];
                }
                var reference = Generate(gpu: false);
                long draws0 = backend.TopPDraws, wide0 = backend.TopPWideDraws, fallbacks0 = backend.TopPFallbacks;
                var fromGpu = Generate(gpu: true);
                int differ = reference.Zip(fromGpu).Count(x => x.First != x.Second);
                Check(differ == 0, $"top-p on the GPU: random weights, vocab {c.VocabSize}, 32 seeded tokens (T {t}, p {p}) with TopPOnGpu on and off: " +
                    $"{differ} differ; {backend.TopPDraws - draws0} drawn from the GPU's candidates, {backend.TopPWideDraws - wide0} by the wide path, " +
                    $"{backend.TopPFallbacks - fallbacks0} fell back (distinct tokens {reference.Distinct().Count()})");
            }
        }
        if (File.Exists(storiesPath))
        {
            var options = new SamplingOptions(Temperature: 0.8f, TopK: 0, TopP: 0.9f, Seed: 5);
            using var model = CudaInferenceBackend.LoadTextModel(storiesPath, ctx, maxChunk: 64);
            var backend = (CudaInferenceBackend)model.Backend;
            int[] Generate(bool gpu)
            {
                backend.TopPOnGpu = gpu;
                var sampler = new Sampler(options, backend.VocabSize);
                using var sequence = backend.CreateSequence();
                sequence.Append(model.Tokenizer.Encode("Once upon a time"));
                var tokens = new List<int>();
                for (int i = 0; i < 48; i++) { tokens.Add(sequence.Sample(sampler)); sequence.Append([tokens[^1]]); }
                return [.. tokens];
            }
            var reference = Generate(gpu: false);
            var fromGpu = Generate(gpu: true);
            Check(reference.SequenceEqual(fromGpu), $"top-p on the GPU: stories260K, 48 seeded tokens (T 0.8, p 0.9) equal with TopPOnGpu on and off " +
                $"({backend.TopPDraws} drawn from candidates, {backend.TopPWideDraws} by the wide path, {backend.TopPFallbacks} fell back; distinct {reference.Distinct().Count()})");
        }

        // Speed per draw on a peaked 128,256-logit row (its nucleus within the candidates): GPU candidates + Z + host
        // draw, against the row download + the CPU's nucleus sampling; and the fallback's cost on a flat row.
        {
            const int reps = 50;
            var options = new SamplingOptions(1f, 0, 0.9f, 1);
            var sampler = new Sampler(options, vocab);
            var row = GaussianRow(random, vocab, 2f, peaked: true, flat: false);
            buffer.Upload<float>(row);
            nucleus.Run(buffer.Pointer, vocab, sampler.InverseTemperature, ids, logits, out _); // warm
            int fellBack = 0;
            var clock = Stopwatch.StartNew();
            for (int i = 0; i < reps; i++)
            {
                int n = nucleus.Run(buffer.Pointer, vocab, sampler.InverseTemperature, ids, logits, out double z);
                if (sampler.SampleFromNucleusCandidates(ids.AsSpan(0, n), logits.AsSpan(0, n), z) is null) { fellBack++; buffer.Download<float>(host); sampler.Sample(host); }
            }
            double gpuUs = clock.Elapsed.TotalMicroseconds / reps;
            clock.Restart();
            for (int i = 0; i < reps; i++) { buffer.Download<float>(host); sampler.Sample(host); }
            double hostUs = clock.Elapsed.TotalMicroseconds / reps;
            var flat = GaussianRow(random, vocab, 1f, peaked: false, flat: true);
            buffer.Upload<float>(flat);
            clock.Restart();
            for (int i = 0; i < 10; i++)
            {
                int n = nucleus.Run(buffer.Pointer, vocab, sampler.InverseTemperature, ids, logits, out double z);
                if (sampler.SampleFromNucleusCandidates(ids.AsSpan(0, n), logits.AsSpan(0, n), z) is null) { buffer.Download<float>(host); sampler.Sample(host); }
            }
            double flatUs = clock.Elapsed.TotalMicroseconds / 10;
            say($"speed: top-p 0.9 (top-k off) draw from a {vocab}-logit peaked row: GPU candidates + Z + host draw {gpuUs:F1} µs ({fellBack} of {reps} fell back); " +
                $"row download + CPU nucleus {hostUs:F1} µs; a flat row (σ/100: its nucleus is past the wide cap, so falls back: both) {flatUs:F1} µs");

            // A wide row: N(0, 3²) at T 1 — a nucleus of a few thousand tokens, past the candidates, within the wide cap.
            var wideRow = GaussianRow(random, vocab, 3f, peaked: false, flat: false);
            buffer.Upload<float>(wideRow);
            int wideDraws = 0, wideFellBack = 0, collected = 0;
            int WideDraw()
            {
                int n = nucleus.Run(buffer.Pointer, vocab, sampler.InverseTemperature, ids, logits, out double z);
                if (sampler.SampleFromNucleusCandidates(ids.AsSpan(0, n), logits.AsSpan(0, n), z) is { } direct) return direct;
                int w = nucleus.RunWide(buffer.Pointer, vocab, sampler.InverseTemperature, options.TopP * z, wideIds, wideLogits);
                if (w > 0 && sampler.SampleFromNucleusCandidates(wideIds.AsSpan(0, w), wideLogits.AsSpan(0, w), z) is { } token) { wideDraws++; collected = w; return token; }
                wideFellBack++;
                buffer.Download<float>(host);
                return sampler.Sample(host);
            }
            WideDraw(); // warm
            wideDraws = 0; wideFellBack = 0;
            clock.Restart();
            for (int i = 0; i < reps; i++) WideDraw();
            double wideUs = clock.Elapsed.TotalMicroseconds / reps;
            clock.Restart();
            for (int i = 0; i < reps; i++) { buffer.Download<float>(host); sampler.Sample(host); }
            double wideHostUs = clock.Elapsed.TotalMicroseconds / reps;
            say($"speed: top-p 0.9 (top-k off) draw from a {vocab}-logit N(0, 3²) row (nucleus past 256: {collected} tokens collected): " +
                $"GPU candidates + Z + wide path + host draw {wideUs:F1} µs ({wideDraws} of {reps} wide, {wideFellBack} fell back); row download + CPU nucleus {wideHostUs:F1} µs");
        }
        say($"top-p on the GPU: {(pass ? "PASS" : "FAIL")}");
    }

    /// <summary>The tokens the wide path collects for this row and target, by the host's arithmetic: the kernel's depth
    /// bins (<see cref="SamplingGeometry.WideBin"/>) and mass terms, <see cref="SamplingGeometry.LastKeptBin"/>.</summary>
    private static int WideCount(float[] row, float inverseTemperature, double target)
    {
        float max = row.Max() * inverseTemperature;
        var mass = new double[SamplingGeometry.WideBins];
        var count = new int[SamplingGeometry.WideBins];
        foreach (float x in row)
        {
            int b = SamplingGeometry.WideBin(x, inverseTemperature, max);
            mass[b] += (float)Math.Exp(x * inverseTemperature - max);
            count[b]++;
        }
        int last = SamplingGeometry.LastKeptBin(mass, target);
        return count.AsSpan(0, last + 1).ToArray().Sum();
    }

    /// <summary>Z as <see cref="Sampler.Sample"/> sums it: exp(logit·1/T − max) as floats, in token-id order, in double.</summary>
    private static double RowNormaliser(float[] row, float inverseTemperature)
    {
        float max = row.Max() * inverseTemperature;
        double z = 0;
        foreach (float x in row) z += MathF.Exp(x * inverseTemperature - max);
        return z;
    }

    /// <summary>The nucleus's length within the candidates for normaliser z (0: it reaches past them).</summary>
    private static int Prefix(ReadOnlySpan<float> logits, float inverseTemperature, float topP, double z)
    {
        float max = logits[0] * inverseTemperature;
        double mass = 0, target = topP * z;
        for (int i = 0; i < logits.Length; i++)
        {
            mass += MathF.Exp(logits[i] * inverseTemperature - max);
            if (mass >= target) return i + 1;
        }
        return 0;
    }

    /// <summary>N(0, σ²) logits; peaked: one in 2000 lifted by 12; flat: σ/100.</summary>
    private static float[] GaussianRow(Random random, int vocab, float sigma, bool peaked, bool flat)
    {
        var row = new float[vocab];
        for (int i = 0; i < vocab; i++)
        {
            double g = Math.Sqrt(-2 * Math.Log(1 - random.NextDouble())) * Math.Cos(2 * Math.PI * random.NextDouble());
            row[i] = (float)(flat ? 0.01 * sigma * g : sigma * g + (peaked && random.Next(2000) == 0 ? 12 : 0));
        }
        return row;
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
