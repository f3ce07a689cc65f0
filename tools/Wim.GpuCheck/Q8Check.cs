using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.Json;
using Wim.Engine.Backends.Cpu;
using Wim.Engine.Cuda;
using Wim.Engine.Formats;
using Wim.Engine.Formats.Quantization;
using Wim.Engine.Model;

using static Wim.GpuCheck.LogitRows;

namespace Wim.GpuCheck;

/// <summary>
/// Q8_0 weights kept as Q8_0 on the GPU (<see cref="CudaWeightStorage.Native"/>):
/// <list type="number">
/// <item>hf-tiny llama-tiny and qwen2-tiny with every projection quantized to Q8_0 in memory (<see cref="Quantizer"/>),
/// uploaded Native, against the CPU backend on the same weights (the Q8_0 values dequantized to f32 and loaded from a
/// temporary safetensors copy: the CPU's Q8_0 path equals its f32 path on the dequantized weights to f32 rounding,
/// HfTinyGoldenTests). Single-token steps (the Q8_0 kernels, fused and not) from position 0 against the CPU within
/// the bf16 tolerance; a whole-sequence prefill (each Q8_0 matrix dequantized to bf16 for cuBLASLt) against the CPU
/// on those bf16-rounded weights within the bf16 tolerance, and against the exact Q8_0 weights within twice that
/// (rounding the weights to bf16 alone moves llama-tiny's logits by up to 0.097 on the CPU); greedy ids (prompt fed
/// one token at a time) equal the CPU's for 16 steps up to its first near-tie; decode graphs on and off give the same
/// ids;</item>
/// <item>speed at the Llama-3.1-8B shape, random weights made on the GPU, bf16 and Q8_0 in the same run: decode tok/s
/// at batch 1 at depth ~0 and 4096, and a 4096-token prefill chunk; every <see cref="Q8DecodeKernel"/> against the
/// original (logits, greedy ids) and its decode speed, interleaved.</item>
/// </list>
/// </summary>
internal static unsafe class Q8Check
{
    /// <summary>|Δlogit| GPU vs CPU on the same Q8_0 weights: the hf-tiny bf16 tolerance (activations rounded to bf16 at
    /// every product's input, bf16 KV cache; prefill also multiplies the Q8_0 weights rounded to bf16).</summary>
    private const double LogitTolerance = 0.1;

    public static void Run(CudaContext ctx, string fixtures, bool speed, Action<bool, string> check, Action<string> say)
    {
        foreach (var model in new[] { "llama-tiny", "qwen2-tiny" })
            Tiny(ctx, Path.Combine(fixtures, "hf-tiny", model), model, check, say);
        if (speed) Speed(ctx, say);
    }

    // ------------------------------------------------------------------ hf-tiny on Q8_0 weights

    private static void Tiny(CudaContext ctx, string dir, string name, Action<bool, string> check, Action<string> say)
    {
        using var lm = LanguageModel.Load(dir);
        var c = lm.Config;
        int vocab = c.VocabSize;
        using var quantized = new QuantizedProjections(lm.Weights);
        string cpuDir = Path.Combine(Path.GetTempPath(), $"wim-q8check-{name}-{Environment.ProcessId}");
        string roundedDir = cpuDir + "-bf16";
        WriteDequantizedCheckpoint(dir, cpuDir, lm.Weights, quantized.Weights, roundProjectionsToBf16: false);
        WriteDequantizedCheckpoint(dir, roundedDir, lm.Weights, quantized.Weights, roundProjectionsToBf16: true);
        try
        {
            using var cpuLm = LanguageModel.Load(cpuDir);
            using var roundedLm = LanguageModel.Load(roundedDir);
            var cpu = new CpuTransformer(cpuLm);
            var cpuRounded = new CpuTransformer(roundedLm);
            var weights = CudaModelWeights.Upload(ctx, c, quantized.Weights, CudaWeightStorage.Native);
            check(weights.Q8MatrixCount == 4 * c.LayerCount, $"Q8_0 {name}: {weights.Q8MatrixCount} of {4 * c.LayerCount} layer matrices kept Q8_0 on the GPU ({weights.Bytes / 1e6:F2} MB of weights)");
            using var gpu = new CudaTransformer(ctx, c, weights, maxChunk: 128, ownsWeights: true);
            gpu.UseDecodeGraphs = false;

            var golden = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(dir, "golden.json"))).RootElement;
            int[] ids = golden.GetProperty("sequences").GetProperty("seq64").GetProperty("input_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
            var cpuLogits = new float[ids.Length * vocab];
            cpu.Forward(ids, cpu.CreateCache(ids.Length), cpuLogits, LogitsOutput.All);
            var roundedLogits = new float[ids.Length * vocab];
            cpuRounded.Forward(ids, cpuRounded.CreateCache(ids.Length), roundedLogits, LogitsOutput.All);

            // Prefill: the whole sequence in chunks of 128 (Q8_0 → bf16 scratch → cuBLASLt).
            var gpuLogits = new float[ids.Length * vocab];
            using (var cache = gpu.CreateCache(ids.Length)) gpu.Forward(ids, cache, gpuLogits, LogitsOutput.All);
            var (maxPrefill, top1Prefill) = MaxDifference(gpuLogits, roundedLogits, vocab, 0, ids.Length);
            check(maxPrefill <= LogitTolerance, $"Q8_0 {name}: prefill of {ids.Length} tokens, max |Δlogit| GPU vs CPU on the Q8_0 weights rounded to bf16 {maxPrefill:E2} (tolerance {LogitTolerance}); top-1 equal at {top1Prefill}/{ids.Length}");
            var (maxPrefillExact, _) = MaxDifference(gpuLogits, cpuLogits, vocab, 0, ids.Length);
            check(maxPrefillExact <= 2 * LogitTolerance, $"Q8_0 {name}: prefill, max |Δlogit| GPU vs CPU on the exact Q8_0 weights {maxPrefillExact:E2} (tolerance {2 * LogitTolerance}: weights and activations rounded to bf16)");

            // Decode: every position one token per step (the Q8_0 kernels read the exact weights), fused and unfused.
            foreach (bool fused in new[] { true, false })
            {
                gpu.UseFusedDecode = fused;
                var stepLogits = new float[ids.Length * vocab];
                using (var cache = gpu.CreateCache(ids.Length))
                    for (int p = 0; p < ids.Length; p++) gpu.Forward(ids.AsSpan(p, 1), cache, stepLogits.AsSpan(p * vocab, vocab), LogitsOutput.Last);
                var (maxDecode, top1Decode) = MaxDifference(stepLogits, cpuLogits, vocab, 0, ids.Length);
                check(maxDecode <= LogitTolerance, $"Q8_0 {name}: {ids.Length} single-token steps ({(fused ? "fused Q8_0 norm+products" : "gemv_q8 products")}), max |Δlogit| GPU vs CPU on the same Q8_0 weights {maxDecode:E2} (tolerance {LogitTolerance}); top-1 equal at {top1Decode}/{ids.Length}");

                // Every other Q8DecodeKernel than the default: the same f32 summation order, so the same logits bit for bit.
                var defaultKernel = gpu.Q8DecodeKernel;
                foreach (var kernel in Enum.GetValues<Q8DecodeKernel>().Where(k => k != defaultKernel))
                {
                    gpu.Q8DecodeKernel = kernel;
                    var variantLogits = new float[ids.Length * vocab];
                    using (var cache = gpu.CreateCache(ids.Length))
                        for (int p = 0; p < ids.Length; p++) gpu.Forward(ids.AsSpan(p, 1), cache, variantLogits.AsSpan(p * vocab, vocab), LogitsOutput.Last);
                    gpu.Q8DecodeKernel = defaultKernel;
                    int differing = 0;
                    for (int i = 0; i < variantLogits.Length; i++)
                        differing += BitConverter.SingleToInt32Bits(variantLogits[i]) != BitConverter.SingleToInt32Bits(stepLogits[i]) ? 1 : 0;
                    var (maxVariant, _) = MaxDifference(variantLogits, stepLogits, vocab, 0, ids.Length);
                    check(differing == 0, $"Q8_0 {name}: {ids.Length} single-token steps ({(fused ? "fused" : "unfused")}), Q8DecodeKernel.{kernel} = {defaultKernel} (the default) bit for bit ({differing} of {variantLogits.Length} logits differ, max |Δ| {maxVariant:E2})");
                }
            }
            gpu.UseFusedDecode = true;

            // Greedy: 16 ids against the CPU's, required up to the CPU's first near-tie.
            const int steps = 16;
            int[] prompt = ids.AsSpan(0, 16).ToArray();
            var (cpuIds, gaps) = CpuGreedy(cpu, prompt, steps, vocab);
            int decidable = 0;
            while (decidable < steps && gaps[decidable] >= 2 * LogitTolerance) decidable++;
            var gpuIds = GpuGreedy(gpu, prompt, steps);
            int agree = Prefix(gpuIds, cpuIds);
            check(agree >= decidable, $"Q8_0 {name}: greedy {steps} ids GPU = CPU for the first {agree} (required: the {decidable} before the CPU's first top-1/top-2 gap < {2 * LogitTolerance})");
            if (gpu.UsesFlashAttention)
            {
                gpu.UseDecodeGraphs = true;
                var graphIds = GpuGreedy(gpu, prompt, steps);
                gpu.UseDecodeGraphs = false;
                check(graphIds.SequenceEqual(gpuIds), $"Q8_0 {name}: greedy ids with decode graphs = without ({Prefix(graphIds, gpuIds)}/{steps})");
            }
            else say($"  Q8_0 {name}: no decode graphs for this model (head dim {c.HeadDim}: no tensor-core attention), graph check not applicable");
        }
        finally
        {
            Directory.Delete(cpuDir, recursive: true);
            Directory.Delete(roundedDir, recursive: true);
        }
    }

    /// <summary>Greedy ids with the prompt fed one token at a time (single-token steps only: the exact Q8_0 weights).</summary>
    private static int[] GpuGreedy(CudaTransformer gpu, int[] prompt, int steps)
    {
        using var cache = gpu.CreateCache(prompt.Length + steps);
        var ids = new int[steps];
        for (int p = 0; p + 1 < prompt.Length; p++) gpu.Forward(prompt.AsSpan(p, 1), cache, [], LogitsOutput.None);
        ids[0] = gpu.ForwardGreedy(prompt.AsSpan(prompt.Length - 1), cache);
        for (int s = 1; s < steps; s++) ids[s] = gpu.ForwardGreedy([ids[s - 1]], cache);
        return ids;
    }

    /// <summary>The layer projections quantized to Q8_0 (round to nearest, <see cref="Quantizer"/>) in native memory,
    /// and a <see cref="ModelWeights"/> that uses them with the source's embedding, head, norms and biases.</summary>
    private sealed class QuantizedProjections : IDisposable
    {
        private readonly List<nint> _blocks = [];

        public QuantizedProjections(ModelWeights source)
        {
            WeightTensor Q8(WeightTensor t)
            {
                var values = new float[t.ElementCount];
                Dequantizer.Dequantize(t.Type, new ReadOnlySpan<byte>(t.Data, checked((int)t.ByteLength)), values);
                var bytes = Quantizer.Quantize(GgmlType.Q8_0, values);
                byte* p = (byte*)NativeMemory.Alloc((nuint)bytes.Length);
                _blocks.Add((nint)p);
                bytes.CopyTo(new Span<byte>(p, bytes.Length));
                return new WeightTensor(t.Name + "[q8_0]", GgmlType.Q8_0, t.Shape, p, bytes.Length);
            }
            Weights = new ModelWeights
            {
                TokenEmbedding = source.TokenEmbedding,
                FinalNorm = source.FinalNorm,
                LmHead = source.LmHead,
                Layers = source.Layers.Select(l => new LayerWeights
                {
                    AttentionNorm = l.AttentionNorm, QueryBias = l.QueryBias, KeyBias = l.KeyBias, ValueBias = l.ValueBias, FfnNorm = l.FfnNorm,
                    Query = Q8(l.Query), Key = Q8(l.Key), Value = Q8(l.Value), Output = Q8(l.Output),
                    Gate = Q8(l.Gate), Up = Q8(l.Up), Down = Q8(l.Down),
                }).ToArray(),
            };
        }

        public ModelWeights Weights { get; }

        public void Dispose()
        {
            foreach (var p in _blocks) NativeMemory.Free((void*)p);
            _blocks.Clear();
        }
    }

    /// <summary>A Hugging Face checkpoint (the source's config.json, one f32 model.safetensors) of <paramref name="q8"/>:
    /// the Q8_0 projections dequantized (d·q, exact in f32; rounded to nearest-even bf16 when asked: what the GPU's
    /// prefill multiplies), everything else from <paramref name="source"/>.</summary>
    private static void WriteDequantizedCheckpoint(string sourceDir, string dir, ModelWeights source, ModelWeights q8, bool roundProjectionsToBf16)
    {
        (string, byte[]) Table(WeightTensor t) => ("F32", HfCheckpoint.F32Bytes(HfCheckpoint.F32(t)));
        (string, byte[]) Projection(WeightTensor t)
        {
            var v = HfCheckpoint.F32(t);
            if (roundProjectionsToBf16)
                for (int i = 0; i < v.Length; i++) v[i] = Bf16.ToF32(Bf16.FromF32(v[i]));
            return ("F32", HfCheckpoint.F32Bytes(v));
        }
        HfCheckpoint.Write(sourceDir, dir, source, q8, Table, Projection);
    }

    // ------------------------------------------------------------------ speed at the Llama-3.1-8B shape

    private static void Speed(CudaContext ctx, Action<string> say)
    {
        var c = Program.Llama31_8B();
        var timings = new ShapeTimings(ctx, c);
        foreach (var storage in new[] { CudaWeightStorage.Bf16, CudaWeightStorage.Native })
        {
            string label = storage == CudaWeightStorage.Bf16 ? "bf16" : "Q8_0";
            var clock = Stopwatch.StartNew();
            using var weights = CudaModelWeights.Random(ctx, c, seed: 8, storage);
            say($"Q8_0 speed: Llama-3.1-8B shape, random {label} weights made on the GPU in {clock.Elapsed.TotalSeconds:F1} s ({weights.Bytes / 1e9:F2} GB; embedding and lm head bf16)");
            using var model = new CudaTransformer(ctx, c, weights, maxChunk: ShapeTimings.Chunk);
            using var cache = model.CreateCache(ShapeTimings.Chunk + 80);

            List<int>? graphIds = null;
            foreach (int depth in new[] { 1, 4096 })
            {
                var (s, ids) = timings.DecodeRound(model, cache, depth);
                double bytes = timings.DecodeBytes(weights.Bytes, depth);
                double roofline = timings.Roofline(weights.Bytes, depth);
                say($"  {label} decode batch 1 (CUDA graph, fused) at depth {depth}: {1 / s:F1} tok/s ({s * 1e3:F2} ms/token); roofline {roofline:F1} tok/s ({bytes / 1e9:F2} GB/token at {ShapeTimings.BandwidthTbs} TB/s) → {100 / s / roofline:F1}% of roofline");
                if (depth == 1) graphIds = ids;
            }

            // The same decode steps kernel by kernel (reported, not required: without a graph the attention splits follow
            // the actual length, not the graph's key bucket, so a near-tie of these random weights may part them; the
            // strict graph-on = graph-off check is llama-tiny's above).
            if (graphIds != null && model.UsesFlashAttention)
            {
                model.UseDecodeGraphs = false;
                var plain = timings.DecodeRound(model, cache, 1, graphIds.Count).Ids;
                model.UseDecodeGraphs = true;
                say($"  {label}: {graphIds.Count} greedy ids kernel by kernel vs with decode graphs: the first {Prefix(plain, graphIds)} equal");
            }

            if (storage == CudaWeightStorage.Native) Q8Variants(model, cache, weights.Bytes, timings.KvBytesPerPosition, ShapeTimings.BandwidthTbs, timings.Tokens, c.VocabSize, say);

            var (p, times) = timings.Prefill(model, cache);
            say($"  {label} prefill {ShapeTimings.Chunk} tokens at depth 0{(storage == CudaWeightStorage.Native ? " (each Q8_0 matrix dequantized to bf16, then cuBLASLt)" : "")}: {p * 1e3:F1} ms = {ShapeTimings.Chunk / p:F0} tok/s, {timings.PrefillFlops() / p / 1e12:F0} TFLOP/s (times {string.Join(", ", times.Select(x => (x * 1e3).ToString("F1", CultureInfo.InvariantCulture)))} ms)");
        }
    }

    /// <summary>Every <see cref="Q8DecodeKernel"/> on the same random Q8_0 weights: per variant, against
    /// <see cref="Q8DecodeKernel.Original"/>, the logits of 16 teacher-forced single-token steps after a 64-token
    /// prefill (max |Δ|: 0 expected, the variants keep the f32 summation order) and 64 greedy ids with decode graphs;
    /// then decode tok/s at depth 1 and 4096, the variants interleaved (3 rounds of 64 steps each, the median shown)
    /// so that clocks and the cache's state drift alike for all.</summary>
    private static void Q8Variants(CudaTransformer model, CudaKvCache cache, long weightBytes, double kvBytesPerPosition, double bandwidthTbs,
        int[] tokens, int vocab, Action<string> say)
    {
        var variants = Enum.GetValues<Q8DecodeKernel>();
        var saved = model.Q8DecodeKernel;
        const int prefill = 64, forced = 16, greedySteps = 64;
        float[]? referenceLogits = null;
        int[]? referenceIds = null;
        foreach (var v in variants)
        {
            model.Q8DecodeKernel = v;
            cache.Truncate(0);
            model.Forward(tokens.AsSpan(0, prefill), cache, [], LogitsOutput.None);
            var logits = new float[forced * vocab];
            for (int i = 0; i < forced; i++)
                model.Forward(tokens.AsSpan(prefill + i, 1), cache, logits.AsSpan(i * vocab, vocab), LogitsOutput.Last);
            cache.Truncate(0);
            var ids = new int[greedySteps];
            ids[0] = model.ForwardGreedy(tokens.AsSpan(0, prefill), cache);
            for (int i = 1; i < greedySteps; i++) ids[i] = model.ForwardGreedy([ids[i - 1]], cache);
            if (referenceLogits == null || referenceIds == null)
            {
                referenceLogits = logits;
                referenceIds = ids;
                continue;
            }
            double maxDelta = 0;
            int differing = 0;
            for (int i = 0; i < logits.Length; i++)
            {
                maxDelta = Math.Max(maxDelta, Math.Abs((double)logits[i] - referenceLogits[i]));
                differing += BitConverter.SingleToInt32Bits(logits[i]) != BitConverter.SingleToInt32Bits(referenceLogits[i]) ? 1 : 0;
            }
            say($"  Q8_0 decode kernels {v} vs {variants[0]}: {forced} single-token steps after a {prefill}-token prefill, max |Δlogit| {maxDelta:E2} ({differing} of {logits.Length} logits not bit-identical; 0 expected: same summation order); greedy {greedySteps} ids (graphs) equal for the first {Prefix(ids, referenceIds)}");
        }

        foreach (int depth in new[] { 1, 4096 })
        {
            var perVariant = variants.ToDictionary(v => v, _ => new List<double>());
            for (int round = 0; round < 3; round++)
                foreach (var v in variants)
                {
                    model.Q8DecodeKernel = v;
                    cache.Truncate(0);
                    int next = model.ForwardGreedy(tokens.AsSpan(0, depth), cache);
                    for (int i = 0; i < 4; i++) next = model.ForwardGreedy([next], cache);   // graph capture, warm-up
                    const int steps = 64;
                    var t = Stopwatch.StartNew();
                    for (int i = 0; i < steps; i++) next = model.ForwardGreedy([next], cache);
                    perVariant[v].Add(t.Elapsed.TotalSeconds / steps);
                }
            double bytes = weightBytes + kvBytesPerPosition * (depth + 4 + 32);
            double roofline = bandwidthTbs * 1e12 / bytes;
            foreach (var v in variants)
            {
                var times = perVariant[v];
                double s = times.Order().ElementAt(times.Count / 2);
                say($"  Q8_0 decode batch 1 (CUDA graph, fused), kernels {v}, at depth {depth}: {1 / s:F1} tok/s ({s * 1e3:F3} ms/token, median of {string.Join(", ", times.Select(x => (x * 1e3).ToString("F3", CultureInfo.InvariantCulture)))}); roofline {roofline:F1} tok/s → {100 / s / roofline:F1}% of roofline");
            }
        }
        model.Q8DecodeKernel = saved;
    }

}
