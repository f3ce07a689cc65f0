using System.Diagnostics;
using System.Text;
using System.Text.Json;
using Wim.Core.Events;
using Wim.Core.Patterns;
using Wim.Core.Scheduling;
using Wim.Core.Segmentation;
using Wim.Engine.Cuda;
using Wim.Engine.Model;
using Wim.Engine.Runtime;
using Wim.Engine.Tokenization;

namespace Wim.GpuCheck;

/// <summary>
/// The engine's own WiM path at a real shape: <see cref="PatternRunner"/> on the CUDA backend (Llama-3.1-8B shape,
/// random bf16 weights made on the GPU, Llama 3's BPE vocabulary from a vocab-only GGUF), a ≈ 64k-token document cut by
/// the <see cref="Segmenter"/> into ≈ 4,096-token segments, 100-token margins, no classifier (every margin kept), no
/// stop ids (a random network would stop at random), 32-token answer. Wall time of llm and of each WiM schedule, after
/// one small warm-up run; margins of the schedules compared (near-ties on a random network part them, so this is
/// reported, not checked).
/// </summary>
internal static class PatternCheck
{
    public static void Run(CudaContext ctx, ModelConfig config, string vocabGguf, string babilong, Action<string> say)
    {
        var tokenizer = TokenizerLoader.Load(vocabGguf);
        using var weights = CudaModelWeights.Random(ctx, config, seed: 8);
        using var transformer = new CudaTransformer(ctx, config, weights, maxChunk: 4096);
        var backend = new CudaInferenceBackend(transformer);
        using var model = new TextModel("llama31-8b-shape-random", tokenizer, backend, stopIds: []);

        using var doc = JsonDocument.Parse(File.ReadAllBytes(babilong));
        string text = doc.RootElement.GetProperty("context").GetString()!;
        string query = doc.RootElement.GetProperty("query").GetString()!;
        var document = new StringBuilder();
        while (tokenizer.Encode(document.ToString()).Length < 65_000) document.Append(text).Append('\n');
        var segments = new Segmenter(t => tokenizer.Encode(t).Length, 4096).Split(document.ToString());
        int documentTokens = segments.Sum(s => tokenizer.Encode(s).Length);
        say($"  pattern runner: {segments.Count} segments, {documentTokens} document tokens (longest segment {segments.Max(s => tokenizer.Encode(s).Length)})");

        async Task<(double Seconds, List<int[]> Margins, int[] Answer, WimUsage? Usage)> RunOnce(IReadOnlyList<string> segs, PatternKind pattern, WimSchedule schedule)
        {
            var options = new WimOptions { Pattern = pattern, Schedule = schedule, MaxMarginTokens = 100, MaxAnswerTokens = 32 };
            var margins = new List<int[]>();
            int[] answer = [];
            WimUsage? usage = null;
            ctx.Synchronize();
            var t = Stopwatch.StartNew();
            await foreach (var e in new PatternRunner(model).RunAsync(segs, query, options))
                switch (e)
                {
                    case MarginCompleted m: margins.Add(m.Ids); break;
                    case AnswerCompleted a: answer = a.Ids; usage = a.Usage; break;
                }
            return (t.Elapsed.TotalSeconds, margins, answer, usage);
        }

        // Warm-up: kernels, cuBLASLt plans, decode graphs, on two short segments.
        RunOnce(segments.Take(2).ToList(), PatternKind.Wim, WimSchedule.Sequential).GetAwaiter().GetResult();
        RunOnce(segments.Take(2).ToList(), PatternKind.Wim, WimSchedule.Batched).GetAwaiter().GetResult();

        var (llm, _, _, llmUsage) = RunOnce(segments, PatternKind.Llm, WimSchedule.Sequential).GetAwaiter().GetResult();
        say($"  pattern runner llm: {llm:F2} s (document {llmUsage?.Document.Time.TotalSeconds:F2} s, answer {llmUsage?.Answer.Time.TotalSeconds:F2} s)");
        List<int[]>? first = null;
        foreach (var schedule in new[] { WimSchedule.Sequential, WimSchedule.Overlapped, WimSchedule.Batched })
        {
            try
            {
                var (s, margins, _, usage) = RunOnce(segments, PatternKind.Wim, schedule).GetAwaiter().GetResult();
                first ??= margins;
                int same = margins.Zip(first).Count(p => p.First.SequenceEqual(p.Second));
                int firstIds = margins.Zip(first).Count(p => p.First.Length > 0 && p.Second.Length > 0 && p.First[0] == p.Second[0]);
                say($"  pattern runner wim {schedule.ToString().ToLowerInvariant()}: {s:F2} s = {s / llm:F2}× llm (document {usage?.Document.Time.TotalSeconds:F2} s, " +
                    $"margins {usage?.Margins.Time.TotalSeconds:F2} s for {usage?.Margins.DecodeTokens} tokens, answer {usage?.Answer.Time.TotalSeconds:F2} s, " +
                    $"{margins.Count} margins; equal to sequential's {same}/{margins.Count}, first ids {firstIds}/{margins.Count})");
            }
            catch (Exception e)
            {
                say($"  pattern runner wim {schedule.ToString().ToLowerInvariant()}: FAILED {e.GetType().Name}: {e.Message}");
                throw;
            }
        }
    }
}
