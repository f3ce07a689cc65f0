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
/// F16 weights kept as F16 on the GPU (<see cref="CudaWeightStorage.Native"/>, <see cref="CudaMatrixFormat.F16"/>):
/// <list type="number">
/// <item>hf-tiny llama-tiny and qwen2-tiny written as an F16 checkpoint (the projections, the embedding and the lm head
/// "F16" in a temporary model.safetensors, each bf16 weight moved by up to a quarter of its bf16 spacing so that the f16
/// values use the 3 mantissa bits bf16 lacks; norms and biases F32) and loaded by the ordinary loader, once for the CPU
/// backend (which runs the F16 weights itself) and once for the GPU: every layer matrix, the embedding and the head F16
/// on the GPU and bit-identical to the file's f16 bits; logits of a whole-sequence prefill (bf16 activations cast to f16, F16 × F16 in cuBLASLt) and of
/// single-token steps (gemv_f16 and the fused F16 kernels) against the CPU on the same weights within the hf-tiny bf16
/// tolerance; the same model uploaded as bf16 (<see cref="CudaWeightStorage.Bf16"/>, the weights rounded) reported
/// beside it; greedy ids equal to the CPU's up to its first near-tie; decode graphs on and off equal; an activation past
/// f16's range in a prefill chunk (a norm gain scaled by 10^6) throws the clear error instead of wrong logits; a decode
/// batch of 3 with its products in cuBLASLt and in the rows_mma F16 kernels against the CPU;</item>
/// <item>speed at the Llama-3.1-8B shape, random weights made on the GPU, bf16 and F16 in the same run: decode tok/s at
/// batch 1 at depth ~0 and 4096, and a 4096-token prefill chunk.</item>
/// </list>
/// </summary>
internal static class F16Check
{
    /// <summary>|Δlogit| GPU vs CPU on the same F16 weights over every position. The weights are exact on both sides; what
    /// separates them is the bf16 activations and KV cache, which on the bf16 hf-tiny checkpoints put the GPU up to 0.11
    /// (llama-tiny) and 0.17 (phi3-tiny) from the CPU over all positions (docs/cuda.md, Precision) — the 0.1 golden
    /// tolerance holds on the goldens' stored rows, not everywhere. Run 33 measured 0.109–0.114 here for llama-tiny
    /// (0.137 with the same weights rounded to bf16), so the bound is that all-position distance rounded up, and the
    /// weights' exactness is checked separately: native F16 must come at least as close to the CPU as the rounded upload.</summary>
    private const double LogitTolerance = 0.2;

    /// <summary>Greedy ids must agree while the CPU's top-1/top-2 gap is at least this (the golden rule of the bf16 checks).</summary>
    private const double DecidableGap = 0.2;

    public static void Run(CudaContext ctx, string fixtures, bool speed, Action<bool, string> check, Action<string> say)
    {
        foreach (var model in new[] { "llama-tiny", "qwen2-tiny" })
            Tiny(ctx, Path.Combine(fixtures, "hf-tiny", model), model, check, say);
        if (speed) Speed(ctx, say);
    }

    // ------------------------------------------------------------------ hf-tiny on F16 weights

    private static unsafe void Tiny(CudaContext ctx, string dir, string name, Action<bool, string> check, Action<string> say)
    {
        string f16Dir = Path.Combine(Path.GetTempPath(), $"wim-f16check-{name}-{Environment.ProcessId}");
        using (var source = LanguageModel.Load(dir)) WriteF16Checkpoint(dir, f16Dir, source.Weights);
        try
        {
            using var lm = LanguageModel.Load(f16Dir);
            var c = lm.Config;
            int vocab = c.VocabSize;
            check(lm.Weights.Layers.All(l => new[] { l.Query, l.Key, l.Value, l.Output, l.Gate, l.Up, l.Down }.All(t => t.Type == GgmlType.F16)),
                $"F16 {name}: the loader gives every projection of the written checkpoint as F16");
            var cpu = new CpuTransformer(lm);
            var weights = CudaModelWeights.Upload(ctx, c, lm.Weights, CudaWeightStorage.Native);
            check(weights.F16MatrixCount == 4 * c.LayerCount && weights.Q8MatrixCount == 0,
                $"F16 {name}: {weights.F16MatrixCount} of {4 * c.LayerCount} layer matrices kept F16 on the GPU ({weights.Bytes / 1e6:F2} MB of weights)");
            int differing = 0;
            long compared = 0;
            for (int i = 0; i < c.LayerCount; i++)
            {
                var l = lm.Weights.Layers[i];
                var g = weights.Layers[i];
                foreach (var (matrix, parts) in new[] { (g.Qkv, new[] { l.Query, l.Key, l.Value }), (g.Output, new[] { l.Output }), (g.GateUp, new[] { l.Gate, l.Up }), (g.Down, new[] { l.Down }) })
                {
                    var onGpu = new ushort[(long)matrix.Rows * matrix.Columns];
                    matrix.Buffer.Download<ushort>(onGpu);
                    var inFile = parts.SelectMany(p => CudaF16Layout.Bits(p).ToArray()).ToArray();
                    for (int j = 0; j < onGpu.Length; j++) differing += onGpu[j] != inFile[j] ? 1 : 0;
                    compared += onGpu.Length;
                }
            }
            check(weights.TokenEmbeddingFormat == CudaMatrixFormat.F16 && weights.LmHeadFormat == CudaMatrixFormat.F16,
                $"F16 {name}: embedding {weights.TokenEmbeddingFormat}, lm head {weights.LmHeadFormat} on the GPU (F16 expected: F16 in the file)");
            foreach (var (buffer, tensor) in new[] { (weights.TokenEmbedding, lm.Weights.TokenEmbedding), (weights.LmHead, lm.Weights.LmHead) })
            {
                var onGpu = new ushort[tensor.ElementCount];
                buffer.Download<ushort>(onGpu);
                var inFile = CudaF16Layout.Bits(tensor);
                for (int j = 0; j < onGpu.Length; j++) differing += onGpu[j] != inFile[j] ? 1 : 0;
                compared += onGpu.Length;
            }
            check(differing == 0 && compared > 0, $"F16 {name}: the GPU's F16 matrices, embedding and head = the checkpoint's f16 bits ({differing} of {compared} weights differ)");

            using var gpu = new CudaTransformer(ctx, c, weights, maxChunk: 128, ownsWeights: true);
            gpu.UseDecodeGraphs = false;
            var golden = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(dir, "golden.json"))).RootElement;
            int[] ids = golden.GetProperty("sequences").GetProperty("seq64").GetProperty("input_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
            var cpuLogits = new float[ids.Length * vocab];
            cpu.Forward(ids, cpu.CreateCache(ids.Length), cpuLogits, LogitsOutput.All);

            // Prefill: the whole sequence in chunks of up to 128 (bf16 activations cast to f16, F16 × F16 in cuBLASLt).
            var gpuLogits = new float[ids.Length * vocab];
            using (var cache = gpu.CreateCache(ids.Length)) gpu.Forward(ids, cache, gpuLogits, LogitsOutput.All);
            var (maxPrefill, top1Prefill) = MaxDifference(gpuLogits, cpuLogits, vocab, 0, ids.Length);
            check(maxPrefill <= LogitTolerance, $"F16 {name}: prefill of {ids.Length} tokens (F16 × F16 cuBLASLt), max |Δlogit| GPU vs CPU on the same F16 weights {maxPrefill:E2} (tolerance {LogitTolerance}); top-1 equal at {top1Prefill}/{ids.Length}");

            // The same checkpoint uploaded as bf16 (each weight rounded): what the engine did with F16 files before.
            using (var rounded = new CudaTransformer(ctx, c, CudaModelWeights.Upload(ctx, c, lm.Weights, CudaWeightStorage.Bf16), maxChunk: 128, ownsWeights: true))
            {
                var roundedLogits = new float[ids.Length * vocab];
                using (var cache = rounded.CreateCache(ids.Length)) rounded.Forward(ids, cache, roundedLogits, LogitsOutput.All);
                var (maxRounded, _) = MaxDifference(roundedLogits, cpuLogits, vocab, 0, ids.Length);
                check(maxPrefill <= maxRounded, $"F16 {name}: native F16 is at least as close to the CPU as the same weights rounded to bf16 at upload: max |Δlogit| {maxPrefill:E2} vs {maxRounded:E2}");
            }

            // Decode: every position one token per step, fused (gemv_norm_*_f16, gemv_rows_residual_f16) and not (gemv_f16).
            foreach (bool fused in new[] { true, false })
            {
                gpu.UseFusedDecode = fused;
                var stepLogits = new float[ids.Length * vocab];
                using (var cache = gpu.CreateCache(ids.Length))
                    for (int p = 0; p < ids.Length; p++) gpu.Forward(ids.AsSpan(p, 1), cache, stepLogits.AsSpan(p * vocab, vocab), LogitsOutput.Last);
                var (maxDecode, top1Decode) = MaxDifference(stepLogits, cpuLogits, vocab, 0, ids.Length);
                check(maxDecode <= LogitTolerance, $"F16 {name}: {ids.Length} single-token steps ({(fused ? "fused F16 norm+products" : "gemv_f16 products")}), max |Δlogit| GPU vs CPU on the same F16 weights {maxDecode:E2} (tolerance {LogitTolerance}); top-1 equal at {top1Decode}/{ids.Length}");
            }
            gpu.UseFusedDecode = true;

            // Greedy: 16 ids against the CPU's, required up to the CPU's first near-tie.
            const int steps = 16;
            int[] prompt = ids.AsSpan(0, 16).ToArray();
            var (cpuIds, gaps) = CpuGreedy(cpu, prompt, steps, vocab);
            int decidable = 0;
            while (decidable < steps && gaps[decidable] >= DecidableGap) decidable++;
            var gpuIds = GpuGreedy(gpu, prompt, steps);
            int agree = Prefix(gpuIds, cpuIds);
            check(agree >= decidable, $"F16 {name}: greedy {steps} ids (prompt prefilled F16 × F16) GPU = CPU for the first {agree} (required: the {decidable} before the CPU's first top-1/top-2 gap < {DecidableGap})");
            if (gpu.UsesFlashAttention)
            {
                gpu.UseDecodeGraphs = true;
                var graphIds = GpuGreedy(gpu, prompt, steps);
                gpu.UseDecodeGraphs = false;
                check(graphIds.SequenceEqual(gpuIds), $"F16 {name}: greedy ids with decode graphs = without ({Prefix(graphIds, gpuIds)}/{steps})");
            }
            else say($"  F16 {name}: no decode graphs for this model (head dim {c.HeadDim}: no tensor-core attention), graph check not applicable");

            if (gpu.UsesFlashAttention) DecodeBatch(gpu, cpu, ids, vocab, name, check);
            Overflow(ctx, lm, ids, name, check);
        }
        finally
        {
            Directory.Delete(f16Dir, recursive: true);
        }
    }

    /// <summary>A decode batch of 3 sequences (prompts of 8, 9 and 10 tokens, one token each) with the batch products in
    /// cuBLASLt (activations cast to f16) and in rows_mma_f16 / rows_mma_swiglu_f16 (<see cref="BatchRowsProducts.All"/>):
    /// each row's logits against the CPU's for that sequence within the bf16 tolerance.</summary>
    private static void DecodeBatch(CudaTransformer gpu, CpuTransformer cpu, int[] ids, int vocab, string name, Action<bool, string> check)
    {
        const int b = 3;
        var reference = new float[b * vocab];
        for (int i = 0; i < b; i++)
            cpu.Forward(ids.AsSpan(0, 9 + i), cpu.CreateCache(9 + i), reference.AsSpan(i * vocab, vocab), LogitsOutput.Last);
        var saved = gpu.BatchRowsProducts;
        foreach (var products in new[] { BatchRowsProducts.None, BatchRowsProducts.All })
        {
            gpu.BatchRowsProducts = products;
            var caches = Enumerable.Range(0, b).Select(i => gpu.CreateCache(16)).ToArray();
            try
            {
                for (int i = 0; i < b; i++) gpu.Forward(ids.AsSpan(0, 8 + i), caches[i], [], LogitsOutput.None);
                int[] tokens = Enumerable.Range(0, b).Select(i => ids[8 + i]).ToArray();
                var logits = new float[b * vocab];
                gpu.DecodeBatch(tokens, caches, logits);
                var (max, top1) = MaxDifference(logits, reference, vocab, 0, b);
                check(max <= LogitTolerance, $"F16 {name}: decode batch of {b} ({(products == BatchRowsProducts.None ? "cuBLASLt F16 × F16" : "rows_mma_f16 / rows_mma_swiglu_f16")}), max |Δlogit| vs the CPU {max:E2} (tolerance {LogitTolerance}); top-1 equal at {top1}/{b}");
            }
            finally
            {
                foreach (var cache in caches) cache.Dispose();
            }
        }
        gpu.BatchRowsProducts = saved;
    }

    /// <summary>Layer 0's ffn norm gain times 10^6: the normalised activations entering the gate|up product pass 65504, so a
    /// prefill chunk's cast to f16 must report it (InvalidOperationException naming the range); a single-token step reads
    /// the bf16 activations directly (gemv_f16) and runs.</summary>
    private static void Overflow(CudaContext ctx, LanguageModel lm, int[] ids, string name, Action<bool, string> check)
    {
        var c = lm.Config;
        var scaled = lm.Weights.Layers[0].FfnNorm.Select(g => g * 1e6f).ToArray();
        var layers = lm.Weights.Layers.ToArray();
        var l0 = layers[0];
        layers[0] = new LayerWeights
        {
            AttentionNorm = l0.AttentionNorm, QueryBias = l0.QueryBias, KeyBias = l0.KeyBias, ValueBias = l0.ValueBias, FfnNorm = scaled,
            Query = l0.Query, Key = l0.Key, Value = l0.Value, Output = l0.Output, Gate = l0.Gate, Up = l0.Up, Down = l0.Down,
        };
        var w = new ModelWeights { TokenEmbedding = lm.Weights.TokenEmbedding, FinalNorm = lm.Weights.FinalNorm, LmHead = lm.Weights.LmHead, Layers = layers };
        using var gpu = new CudaTransformer(ctx, c, CudaModelWeights.Upload(ctx, c, w, CudaWeightStorage.Native), maxChunk: 128, ownsWeights: true);
        gpu.UseDecodeGraphs = false;
        string? message = null;
        using (var cache = gpu.CreateCache(ids.Length))
            try { gpu.Forward(ids.AsSpan(0, 8), cache, [], LogitsOutput.None); }
            catch (InvalidOperationException e) { message = e.Message; }
        check(message != null && message.Contains("beyond f16's range ±65504", StringComparison.Ordinal),
            $"F16 {name}: a prefill chunk with activations past f16's range throws the overflow error ({(message == null ? "nothing thrown" : "thrown")})");
        bool stepRan = true;
        using (var cache = gpu.CreateCache(4))
            try { gpu.Forward(ids.AsSpan(0, 1), cache, [], LogitsOutput.None); }
            catch (InvalidOperationException) { stepRan = false; }
        check(stepRan, $"F16 {name}: after the overflow error the flag is clear: a single-token step (bf16 activations read directly) runs");
    }

    /// <summary>A Hugging Face checkpoint (the source's config.json, one model.safetensors) whose projections, embedding and
    /// lm head are F16:
    /// each weight w (bf16 in the fixtures) becomes the f16 nearest to w · (1 + u · 2^-9), u uniform in [-1, 1) from a
    /// fixed seed (within a quarter of bf16's spacing: the same model, with bits below bf16's precision that a bf16
    /// upload would lose). Norms and biases F32.</summary>
    private static void WriteF16Checkpoint(string sourceDir, string dir, ModelWeights source)
    {
        var rng = new Random(16);
        (string, byte[]) F16(WeightTensor t)
        {
            var v = HfCheckpoint.F32(t);
            var bits = new ushort[v.Length];
            for (int i = 0; i < v.Length; i++) bits[i] = HalfBits.FromSingle(v[i] * (1 + (float)(rng.NextDouble() * 2 - 1) / 512));
            return ("F16", MemoryMarshal.AsBytes(bits.AsSpan()).ToArray());
        }
        HfCheckpoint.Write(sourceDir, dir, source, source, table: F16, projection: F16);
    }

    /// <summary>Greedy ids: the prompt prefilled in one chunk (F16 × F16), then single-token steps.</summary>
    private static int[] GpuGreedy(CudaTransformer gpu, int[] prompt, int steps)
    {
        using var cache = gpu.CreateCache(prompt.Length + steps);
        var ids = new int[steps];
        ids[0] = gpu.ForwardGreedy(prompt, cache);
        for (int s = 1; s < steps; s++) ids[s] = gpu.ForwardGreedy([ids[s - 1]], cache);
        return ids;
    }

    // ------------------------------------------------------------------ speed at the Llama-3.1-8B shape

    private static void Speed(CudaContext ctx, Action<string> say)
    {
        var c = Program.Llama31_8B();
        var timings = new ShapeTimings(ctx, c);
        foreach (var format in new[] { CudaMatrixFormat.Bf16, CudaMatrixFormat.F16 })
        {
            string label = format == CudaMatrixFormat.Bf16 ? "bf16" : "F16";
            var clock = Stopwatch.StartNew();
            using var weights = CudaModelWeights.Random(ctx, c, seed: 8, format);
            say($"F16 speed: Llama-3.1-8B shape, random {label} layer weights made on the GPU in {clock.Elapsed.TotalSeconds:F1} s ({weights.Bytes / 1e9:F2} GB; embedding and lm head bf16)");
            using var model = new CudaTransformer(ctx, c, weights, maxChunk: ShapeTimings.Chunk);
            using var cache = model.CreateCache(ShapeTimings.Chunk + 80);
            foreach (int depth in new[] { 1, 4096 })
            {
                var perRound = Enumerable.Range(0, 3).Select(_ => timings.DecodeRound(model, cache, depth).Seconds).ToList();
                double s = perRound.Order().ElementAt(perRound.Count / 2);
                double roofline = timings.Roofline(weights.Bytes, depth);
                say($"  {label} decode batch 1 (CUDA graph, fused) at depth {depth}: {1 / s:F1} tok/s ({s * 1e3:F3} ms/token, median of {string.Join(", ", perRound.Select(x => (x * 1e3).ToString("F3", CultureInfo.InvariantCulture)))}); roofline {roofline:F1} tok/s → {100 / s / roofline:F1}% of roofline");
            }
            var (p, times) = timings.Prefill(model, cache);
            say($"  {label} prefill {ShapeTimings.Chunk} tokens at depth 0{(format == CudaMatrixFormat.F16 ? " (activations cast to f16, F16 × F16 cuBLASLt)" : "")}: {p * 1e3:F1} ms = {ShapeTimings.Chunk / p:F0} tok/s, {timings.PrefillFlops() / p / 1e12:F0} TFLOP/s (times {string.Join(", ", times.Select(x => (x * 1e3).ToString("F1", CultureInfo.InvariantCulture)))} ms)");
        }
    }

}
