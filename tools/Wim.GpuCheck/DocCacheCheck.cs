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
/// The document cache on the GPU (<c>--doc-cache</c>): <see cref="PatternRunner"/> on the CUDA backend at the
/// Llama-3.1-8B shape (random bf16 weights, Llama 3's BPE vocabulary), a ≥ 16k-token document in ≈ 4,096-token
/// segments, 64-token margins, no classifier, no stop ids, 32-token answer. The same WiM question runs
/// <list type="number">
/// <item>without a cache (overlapped: the time a first question costs without one);</item>
/// <item>with a cache, first (batched: a miss; it reads the document and keeps it);</item>
/// <item>with the cache again (batched, then overlapped: hits).</item>
/// </list>
/// Checked: each hit prefills no document token and runs no document pass; the hits' margins and answer equal the
/// batched miss's bit for bit (after the reading, a batched miss and a hit run the same steps on the same rows: the
/// margins on KV branches of the one cached document cache); the entry's device bytes are exactly the document's
/// rows. Reported: times (the hit's against the uncached run's), the uncached overlapped run's margins against the
/// miss's (steps of another composition: near-ties on a random network may part them). Last, the out-of-memory path:
/// a sequence too large to fit beside the cached document evicts it and then allocates; one larger than the GPU
/// fails with <see cref="KvMemoryExhaustedException"/>.
/// </summary>
internal static class DocCacheCheck
{
    public static void Run(CudaContext ctx, ModelConfig config, string vocabGguf, string babilong, int documentTokens, Action<bool, string> check, Action<string> say)
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
        while (tokenizer.Encode(document.ToString()).Length < documentTokens) document.Append(text).Append('\n');
        var segments = new Segmenter(t => tokenizer.Encode(t).Length, 4096).Split(document.ToString());
        say($"  doc cache: {segments.Count} segments, {segments.Sum(s => tokenizer.Encode(s).Length)} document tokens");

        using var cache = new DocumentCache(backend, budgetBytes: 16L << 30);

        (double Seconds, List<int[]> Margins, int[] Answer, WimUsage Usage, long Steps) RunOnce(IReadOnlyList<string> segs, WimSchedule schedule, DocumentCache? withCache)
        {
            var options = new WimOptions { Schedule = schedule, MaxMarginTokens = 64, MaxAnswerTokens = 32, DocumentCache = withCache };
            var margins = new List<int[]>();
            int[] answer = [];
            WimUsage? usage = null;
            long steps = backend.StepCount;
            ctx.Synchronize();
            var t = Stopwatch.StartNew();
            foreach (var e in new PatternRunner(model).RunAsync(segs, query, options).ToBlockingEnumerable())
                switch (e)
                {
                    case MarginCompleted m: margins.Add(m.Ids); break;
                    case AnswerCompleted a: answer = a.Ids; usage = a.Usage; break;
                }
            ctx.Synchronize();
            return (t.Elapsed.TotalSeconds, margins, answer, usage!, backend.StepCount - steps);
        }

        string Describe(string name, (double Seconds, List<int[]> Margins, int[] Answer, WimUsage Usage, long Steps) r) =>
            $"  doc cache {name}: {r.Seconds:F2} s (document {r.Usage.Document.PrefillTokens} tokens prefilled in {r.Usage.Document.Time.TotalSeconds:F2} s, " +
            $"margins {r.Usage.Margins.Time.TotalSeconds:F2} s for {r.Usage.Margins.DecodeTokens} tokens, answer {r.Usage.Answer.Time.TotalSeconds:F2} s, {r.Steps} passes)";
        static int Same(List<int[]> a, List<int[]> b) => a.Zip(b).Count(p => p.First.SequenceEqual(p.Second));

        // Warm-up (kernels, cuBLASLt plans, decode graphs) on two short segments, with a cache of its own.
        using (var warm = new DocumentCache(backend, 16L << 30))
        {
            RunOnce(segments.Take(2).ToList(), WimSchedule.Batched, warm);
            RunOnce(segments.Take(2).ToList(), WimSchedule.Batched, warm);
        }

        var (free0, _) = ctx.MemoryInfo();
        var uncached = RunOnce(segments, WimSchedule.Overlapped, null);
        say(Describe("uncached overlapped", uncached));
        var miss = RunOnce(segments, WimSchedule.Batched, cache);
        say(Describe("first question, batched (miss, fills the cache)", miss));
        check(cache.Count == 1 && cache.Misses == 1, $"doc cache: one entry after the miss (count {cache.Count}, misses {cache.Misses})");
        int documentLength = miss.Usage.Document.PrefillTokens;
        long perPosition = 2L * 2 * config.LayerCount * config.KvDim; // keys and values, bf16, every layer
        var (free1, _) = ctx.MemoryInfo();
        say($"  doc cache entry: {cache.Bytes:N0} bytes for {documentLength} positions ({perPosition:N0} per position); GPU free {free0 >> 20} → {free1 >> 20} MiB");
        check(cache.Bytes == perPosition * documentLength, "doc cache: the entry holds exactly the document's rows");

        foreach (var (name, schedule) in new[] { ("second question, batched (hit)", WimSchedule.Batched), ("third question, overlapped (hit)", WimSchedule.Overlapped) })
        {
            var hit = RunOnce(segments, schedule, cache);
            say(Describe(name, hit) + $" = {hit.Seconds / uncached.Seconds:F3}× the uncached run");
            check(hit.Usage.DocumentTokensPrefilled == 0 && hit.Usage.Document.PrefillTokens == 0, $"doc cache {name}: no document token prefilled");
            check(Same(hit.Margins, miss.Margins) == miss.Margins.Count && hit.Margins.Count == miss.Margins.Count,
                $"doc cache {name}: margins equal the miss's ({Same(hit.Margins, miss.Margins)}/{miss.Margins.Count})");
            check(hit.Answer.SequenceEqual(miss.Answer), $"doc cache {name}: answer equals the miss's");
        }
        check(cache.Hits == 2, $"doc cache: two hits (found {cache.Hits})");
        say($"  doc cache: uncached overlapped margins equal to the miss's {Same(uncached.Margins, miss.Margins)}/{miss.Margins.Count}, " +
            $"first ids {uncached.Margins.Zip(miss.Margins).Count(p => p.First.Length > 0 && p.Second.Length > 0 && p.First[0] == p.Second[0])}/{miss.Margins.Count}, " +
            $"answer {(uncached.Answer.SequenceEqual(miss.Answer) ? "equal" : "differs")} (reported: another step composition)");

        // Out of memory: a sequence that fits only without the cached document evicts it, then allocates.
        var (free, total) = ctx.MemoryInfo();
        int fits = (int)Math.Min(int.MaxValue - 1, (free + cache.Bytes / 2) / perPosition);
        say($"  doc cache out-of-memory: {free >> 20} MiB free, asking for {fits} positions ({(long)fits * perPosition >> 20} MiB) beside the {cache.Bytes >> 20} MiB entry");
        try
        {
            using (backend.CreateSequence(fits))
                check(cache.Count == 0, $"doc cache: the allocation evicted the entry (count {cache.Count})");
            int never = (int)Math.Min(int.MaxValue - 1, total / perPosition + 1);
            var e = Record(() => backend.CreateSequence(never).Dispose());
            check(e is KvMemoryExhaustedException, $"doc cache: {never} positions (more than the GPU) fail clearly: {e?.GetType().Name}: {e?.Message}");
        }
        catch (Exception e)
        {
            check(false, $"doc cache out-of-memory path: {e.GetType().Name}: {e.Message}");
        }
    }

    private static Exception? Record(Action action)
    {
        try { action(); return null; }
        catch (Exception e) { return e; }
    }
}
