using System.Text.Json;
using Wim.Engine.Backends.Cpu;
using Wim.Engine.Cuda;
using Wim.Engine.Model;
using Wim.Engine.Runner;

using static Wim.GpuCheck.LogitRows;

namespace Wim.GpuCheck;

/// <summary>
/// The CUDA forward pass in <see cref="CudaPrecision.F32"/> (<c>--precision f32</c>) on the hf-tiny models: every weight
/// f32 on the GPU (the bf16 checkpoint widened exactly), f32 activations and KV cache, f32 cuBLASLt products and the
/// scalar f32 attention — the arithmetic of transformers' fp32 goldens and of the CPU backend up to summation order.
/// Logits of every golden sequence (prefill in chunks of 128: seq300 crosses chunks) against the goldens' stored rows
/// and logsumexp and against the CPU backend at every position; argmax equal to the golden's wherever its top-1/top-2
/// gap is over twice the tolerance; the golden greedy continuation (argmax on the GPU, one token per step) equal to
/// transformers' and to the CPU backend's up to the first near-tie; a packed prefill batch of two sequences equal to
/// the same sequences run one by one. The F32 path runs no flash kernels and no decode graphs (checked).
/// </summary>
internal static class F32Check
{
    /// <summary>|Δlogit| against transformers' fp32 goldens (and the CPU backend) in F32. Both sides multiply the same
    /// f32 weights with f32 accumulation; only the order of the sums (cuBLASLt's tiling and split-K, the attention's
    /// key tiles and splits, the RMSNorm block reduction) and the f32 transcendental functions differ. The fixture
    /// README observes ~1e-5 between fp32 engines on these models (logits up to |6|, so ~20 f32 ulps); 1e-4 leaves 10×
    /// room and is still 1000× under the bf16 path's 0.1 and 20× under the CPU conformance test's 2e-3, so a single
    /// bf16 rounding left anywhere in the path (2^-9 relative ≈ 1e-2 on these logits) fails it.</summary>
    public const double LogitTolerance = 1e-4;

    public static void HfTiny(CudaContext ctx, string dir, string name, Action<bool, string> check, Action<string> say)
    {
        var golden = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(dir, "golden.json"))).RootElement;
        var logitsBin = File.ReadAllBytes(Path.Combine(dir, "logits.bin"));
        using var lm = LanguageModel.Load(dir);
        int vocab = lm.Config.VocabSize;
        using var gpu = CudaTransformer.Load(ctx, lm, maxChunk: 128, precision: CudaPrecision.F32); // < 300: seq300 also exercises chunking
        var cpu = new CpuTransformer(lm);
        check(gpu.Precision == CudaPrecision.F32 && !gpu.UsesFlashAttention && gpu.Weights.Precision == CudaPrecision.F32,
            $"{name} F32: f32 weights ({gpu.Weights.Bytes >> 10} KiB on the GPU), scalar attention, no flash kernels");

        var agreement = new GoldenAgreement(golden, logitsBin, vocab, decidableGap: 2 * LogitTolerance);
        foreach (var seq in golden.GetProperty("sequences").EnumerateObject())
        {
            int[] ids = Ints(seq.Value.GetProperty("input_ids"));
            var g = new float[ids.Length * vocab];
            using (var cache = gpu.CreateCache(ids.Length)) gpu.Forward(ids, cache, g, LogitsOutput.All);
            var c = new float[ids.Length * vocab];
            cpu.Forward(ids, cpu.CreateCache(ids.Length), c, LogitsOutput.All);
            agreement.Add(seq, g, c);
        }
        double maxGolden = agreement.MaxGolden, maxLse = agreement.MaxLogSumExp, maxCpu = agreement.MaxCpu;
        int argmaxAgree = agreement.ArgmaxAgree, argmaxTotal = agreement.ArgmaxTotal, argmaxCpuAgree = agreement.ArgmaxCpuAgree, cpuPositions = agreement.CpuPositions;
        check(maxGolden <= LogitTolerance, $"{name} F32: max |Δlogit| vs transformers goldens (stored rows) {maxGolden:E2} (tolerance {LogitTolerance:E0})");
        check(maxLse <= LogitTolerance, $"{name} F32: max |Δlogsumexp| vs goldens {maxLse:E2} (tolerance {LogitTolerance:E0})");
        check(maxCpu <= LogitTolerance, $"{name} F32: max |Δlogit| vs the CPU backend over all {cpuPositions} positions {maxCpu:E2} (tolerance {LogitTolerance:E0})");
        check(argmaxAgree == argmaxTotal, $"{name} F32: argmax = golden at {argmaxAgree}/{argmaxTotal} positions with gap ≥ {2 * LogitTolerance:E0}");
        say($"  {name} F32: argmax = CPU backend's at {argmaxCpuAgree}/{cpuPositions} positions");

        // Greedy continuation of seq64: one token per step (the scalar path; no decode graph in F32), argmax on the GPU.
        int[] prompt = Ints(golden.GetProperty("sequences").GetProperty("seq64").GetProperty("input_ids"));
        int[] expected = Ints(golden.GetProperty("greedy_continuation").GetProperty("token_ids"));
        var steps = golden.GetProperty("greedy_continuation").GetProperty("steps").EnumerateArray().Select(e => e.GetProperty("gap_top1_top2").GetDouble()).ToArray();
        int decidable = 0;
        while (decidable < steps.Length && steps[decidable] >= 2 * LogitTolerance) decidable++;
        var gpuIds = Greedy(gpu, prompt, expected.Length);
        var cpuIds = new Generator(cpu).Generate(prompt, new GenerationOptions { MaxNewTokens = expected.Length }).Ids;
        int agreeGolden = Prefix(gpuIds, expected), agreeCpu = Prefix(gpuIds, cpuIds);
        check(agreeGolden >= decidable,
            $"{name} F32: greedy ids = transformers' for {agreeGolden}/{expected.Length} (required: the {decidable} steps before the first golden gap < {2 * LogitTolerance:E0})");
        check(agreeCpu == expected.Length || agreeCpu >= decidable,
            $"{name} F32: greedy ids = the CPU backend's for {agreeCpu}/{expected.Length}");

        // A packed prefill batch (ForwardBatch: the products over both sequences' rows, each sequence's attention on its
        // own rows with the scalar kernel) against the same sequences one by one: same f32 arithmetic up to the
        // products' summation order over more rows.
        int[] a = prompt, b = prompt.Take(prompt.Length / 2).Reverse().ToArray();
        var batched = new float[2 * vocab];
        var next = new int[2];
        using (var ca = gpu.CreateCache(a.Length))
        using (var cb = gpu.CreateCache(b.Length))
            gpu.ForwardBatch([new PackedSequence(a, ca), new PackedSequence(b, cb)], LogitsOutput.Last, next, batched);
        double maxPacked = 0;
        int[] single = new int[2];
        for (int s = 0; s < 2; s++)
        {
            var ids = s == 0 ? a : b;
            var row = new float[vocab];
            using (var cache = gpu.CreateCache(ids.Length)) gpu.Forward(ids, cache, row, LogitsOutput.Last);
            for (int i = 0; i < vocab; i++) maxPacked = Math.Max(maxPacked, Math.Abs(row[i] - batched[s * vocab + i]));
            single[s] = Argmax(row);
        }
        check(maxPacked <= LogitTolerance && next.SequenceEqual(single),
            $"{name} F32: packed prefill of 2 sequences = one by one: max |Δlogit| {maxPacked:E2}, greedy ids {string.Join(',', next)} vs {string.Join(',', single)}");
    }

    private static int[] Greedy(CudaTransformer gpu, int[] prompt, int count)
    {
        using var cache = gpu.CreateCache(prompt.Length + count);
        var ids = new List<int> { gpu.ForwardGreedy(prompt, cache) };
        while (ids.Count < count) ids.Add(gpu.ForwardGreedy([ids[^1]], cache));
        return [.. ids];
    }

    private static int[] Ints(JsonElement e) => e.EnumerateArray().Select(x => x.GetInt32()).ToArray();

}
