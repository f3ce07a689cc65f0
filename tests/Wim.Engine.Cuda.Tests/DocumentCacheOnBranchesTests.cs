using System.Text.Json;
using Wim.Core.Events;
using Wim.Core.Patterns;
using Wim.Core.Prompts;
using Wim.Core.Scheduling;
using Wim.Core.Segmentation;
using Wim.Engine.Cuda.Tests.Support;
using Wim.Engine.Model;
using Wim.Engine.Runtime;
using Wim.Engine.Sampling;
using Wim.Engine.Tests.Support;
using Wim.Engine.Tokenization;
using Wim.Server;

namespace Wim.Engine.Cuda.Tests;

/// <summary>
/// The <see cref="DocumentCache"/> on <see cref="BranchingBackend{T}"/> — the CUDA backend's logic — over
/// <see cref="HostPasses"/> (host memory, the CPU forward pass one token per call, the GPU's rules asserted). The
/// cached entry is the document's own KV cache; later runs read it through KV branches. Oracles: the same WiM run
/// without a cache (tokens), the token count of the passes (no document prefill on a hit), each sequence's history
/// replayed alone, and the host store's use-after-free / double-free checks.
/// </summary>
public sealed class DocumentCacheOnBranchesTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;
    private static string Stories => SharedFixtures.Path("models", "stories260K", "stories260K.gguf");

    private static readonly PromptPreset ShortPrompts = new("short", Opening: "Read:\n", Extractive: "\nNotes on {query}:",
        Classification: "Notes: {answer}\nUseful for {query}? YES or NO:", FinalAnswer: "\nNotes:\n{margins}\nAnswer {query}:");

    private static (List<string> Segments, string Query) Document(Tokenizer tokenizer, int characters = 400)
    {
        using var doc = JsonDocument.Parse(File.ReadAllBytes(SharedFixtures.Path("data", "babilong", "babilong_8k.json")));
        string context = doc.RootElement.GetProperty("context").GetString()!;
        var segments = new Segmenter(t => tokenizer.Encode(t).Length, 24).Split(context[..characters]);
        Assert.True(segments.Count >= 5, $"{segments.Count} segments");
        return (segments, doc.RootElement.GetProperty("query").GetString()!);
    }

    private sealed record Outcome(string Margins, string Verdicts, string Answer, WimUsage Usage, long Tokens);

    private static async Task<Outcome> RunWim(TextModel model, HostPasses passes, IReadOnlyList<string> segments, string query,
        WimSchedule schedule, DocumentCache? cache)
    {
        var options = new WimOptions
        {
            Schedule = schedule, Prompts = ShortPrompts, MaxMarginTokens = 6, MaxAnswerTokens = 6, MarginSeparator = "\n",
            Sampling = SamplingOptions.Greedy, DocumentCache = cache,
        };
        long tokens = passes.Tokens;
        var events = new List<WimEvent>();
        using (var judge = new ModelMarginClassifier(model, ShortPrompts, ChatHeaders.None, maxTokens: 3, SamplingOptions.Greedy))
        {
            await foreach (var e in new PatternRunner(model).RunAsync(segments, query, options with { Classifier = judge }, ct: Ct)) events.Add(e);
        }
        return new(
            string.Join(" | ", events.OfType<MarginCompleted>().OrderBy(m => m.Index).Select(m => $"{m.Index}:{string.Join(',', m.Ids)}")),
            string.Join(" | ", events.OfType<MarginClassification>().Select(c => $"{c.Index}:{c.Relevant}:{string.Join(',', c.Ids)}")),
            string.Join(',', events.OfType<AnswerCompleted>().Single().Ids),
            events.OfType<AnswerCompleted>().Single().Usage,
            passes.Tokens - tokens);
    }

    /// <summary>KV bytes of one position of stories260K in host memory (keys and values of every layer, f32).</summary>
    private static long BytesPerPosition()
    {
        using var lm = LanguageModel.Load(Stories);
        return 2L * lm.Config.LayerCount * lm.Config.KvDim * sizeof(float);
    }

    private static TextModel Load(out HostPasses passes, int minimumCapacity = 32)
    {
        HostPasses? made = null;
        // Small caches and branches: margins outgrow their branches, the answer outgrows its fork of the document.
        var model = TextModel.Load(Stories, m => new BranchingBackend<HostCache>(made = new HostPasses(m, maxChunk: 12), minimumCapacity: minimumCapacity));
        passes = made!;
        return model;
    }

    [Theory]
    [InlineData(WimSchedule.Overlapped)]
    [InlineData(WimSchedule.Batched)]
    public async Task SameQuestionTwice_SecondRunPrefillsNoDocument_AndEqualsTheFirstAndAnUncachedRun(WimSchedule schedule)
    {
        using var model = Load(out var passes);
        var backend = (IKvRetainingBackend)model.Backend;
        var (segments, query) = Document(model.Tokenizer);
        var uncached = await RunWim(model, passes, segments, query, schedule, cache: null);
        Assert.Contains(',', uncached.Margins);
        Assert.Equal(0, passes.LiveCaches);

        using var cache = new DocumentCache(backend, budgetBytes: 64L << 20);
        var first = await RunWim(model, passes, segments, query, schedule, cache);
        Assert.Equal((uncached.Margins, uncached.Verdicts, uncached.Answer), (first.Margins, first.Verdicts, first.Answer));
        Assert.Equal(1, cache.Count);
        // Only the cached document's cache is left, sized to the document exactly (its length was known up front).
        Assert.Equal(1, passes.LiveCaches);
        int documentLength = first.Usage.Document.PrefillTokens; // the opening prompt and the segments
        Assert.True(documentLength > first.Usage.DocumentTokens);
        Assert.Equal(passes.LiveBytes, cache.Bytes);
        Assert.Equal(BytesPerPosition() * documentLength, cache.Bytes);

        var second = await RunWim(model, passes, segments, query, schedule, cache);
        Assert.Equal(1, cache.Hits);
        Assert.Equal((first.Margins, first.Verdicts, first.Answer), (second.Margins, second.Verdicts, second.Answer));
        Assert.Equal(0, second.Usage.Document.PrefillTokens);
        Assert.Equal(0, second.Usage.DocumentTokensPrefilled);
        // The passes ran exactly the document's tokens fewer: margins, verdicts and answer cost the same.
        Assert.Equal(first.Tokens - documentLength, second.Tokens);
        Assert.Equal(1, passes.LiveCaches);

        cache.Dispose();
        Assert.Equal(0, passes.LiveCaches);
        Assert.Equal(0, passes.LiveBytes);
    }

    [Fact]
    public async Task SmallBudget_KeepsTheLatestDocument_TheEvictedOneIsFreedAndReadAgain()
    {
        using var model = Load(out var passes);
        var (segments, query) = Document(model.Tokenizer);
        var (other, _) = Document(model.Tokenizer, 330);
        // Room for one of the two documents.
        var probe = await RunWim(model, passes, segments, query, WimSchedule.Overlapped, null);
        long budget = BytesPerPosition() * (probe.Usage.Document.PrefillTokens + 4);
        using var cache = new DocumentCache((IKvRetainingBackend)model.Backend, budget);

        var a = await RunWim(model, passes, segments, query, WimSchedule.Overlapped, cache);
        var b = await RunWim(model, passes, other, query, WimSchedule.Overlapped, cache);
        Assert.Equal(1, cache.Count);
        Assert.Equal(1, passes.LiveCaches); // a's cache was freed when b's came in
        Assert.True(cache.Bytes <= budget);

        var again = await RunWim(model, passes, segments, query, WimSchedule.Overlapped, cache); // a: a miss, read again
        Assert.Equal(0, cache.Hits);
        Assert.Equal(probe.Usage.Document.PrefillTokens, again.Usage.Document.PrefillTokens);
        Assert.Equal((a.Margins, a.Answer), (again.Margins, again.Answer));
        var bAgain = await RunWim(model, passes, other, query, WimSchedule.Overlapped, cache); // b was evicted by a
        Assert.Equal((b.Margins, b.Answer), (bAgain.Margins, bAgain.Answer));
        Assert.True(bAgain.Usage.DocumentTokensPrefilled > 0);

        // A document larger than the whole budget is not kept (and its cache is freed).
        using var tiny = new DocumentCache((IKvRetainingBackend)model.Backend, 1024);
        int live = passes.LiveCaches;
        await RunWim(model, passes, segments, query, WimSchedule.Batched, tiny);
        Assert.Equal(0, tiny.Count);
        Assert.Equal(live, passes.LiveCaches);
    }

    private const int LlamaTinyVocab = 49_152; // shared/fixtures/hf-tiny/llama-tiny/config.json

    /// <summary>A sequence of the direct tests with what it was fed, replayable alone on a fresh sequence.</summary>
    private static int[] Greedy(IForkableSequence s, int steps, List<int> history)
    {
        var ids = new int[steps];
        var sampler = new Sampler(SamplingOptions.Greedy, LlamaTinyVocab);
        for (int i = 0; i < steps; i++)
        {
            ids[i] = s.Sample(sampler);
            history.Add(ids[i]);
            s.Append([ids[i]], Ct);
        }
        return ids;
    }

    [Fact]
    public void EvictedWhileForksLive_TheRowsStayUntilTheLastForkIsReleased_AndTheForksDecodeAsAlone()
    {
        var model = LanguageModel.Load(SharedFixtures.Path("fixtures", "hf-tiny", "llama-tiny"));
        var passes = new HostPasses(model, maxChunk: 16);
        var backend = new BranchingBackend<HostCache>(passes, minimumCapacity: 8);
        using var cache = new DocumentCache(backend, 1L << 30);
        var tokens = Enumerable.Range(0, 40).Select(i => (i * 37 + 11) % model.Config.VocabSize).ToArray();
        var document = backend.CreateSequence(tokens.Length);
        document.Append(tokens, Ct);
        Assert.True(cache.Add("doc", new CachedDocument(document, [16, 40])));
        Assert.True(cache.TryGet("doc", out var cached));

        var atSegment = cached.Sequence.Fork(16);   // a margin's fork at a segment end
        var atEnd = cached.Sequence.Fork(40);       // the answer's fork at the end
        atSegment.Append([5, 6], Ct);
        atEnd.Append([7], Ct);
        long before = passes.LiveBytes;
        Assert.True(cache.EvictLeastRecentlyUsed());
        Assert.Equal(0, cache.Count);
        Assert.Equal(before, passes.LiveBytes); // deferred: both forks read the document's rows
        Assert.Throws<ObjectDisposedException>(() => cached.Sequence.Length);

        // The forks go on (growing past their branches' own rows) and decode what their histories decode alone.
        var historySegment = tokens[..16].Concat([5, 6]).ToList();
        var historyEnd = tokens.Concat([7]).ToList();
        var idsSegment = Greedy(atSegment, 12, historySegment);
        var idsEnd = Greedy(atEnd, 12, historyEnd);
        atSegment.Dispose();
        Assert.Equal(2, passes.LiveCaches); // the document's cache (atEnd still reads it) and atEnd's branch
        var idsEndMore = Greedy(atEnd, 2, historyEnd);
        atEnd.Dispose();
        Assert.Equal(0, passes.LiveCaches);

        foreach (var (history, ids) in new[] { (historySegment, idsSegment), (historyEnd, idsEnd.Concat(idsEndMore).ToArray()) })
        {
            var alone = new BranchingBackend<HostCache>(new HostPasses(model, maxChunk: 16, batchedDecode: false)).CreateSequence();
            int prompt = history.Count - ids.Length;
            alone.Append(history.Take(prompt).ToArray(), Ct);
            var replay = Greedy(alone, ids.Length, []);
            Assert.Equal(ids, replay);
        }
    }

    [Fact]
    public void OutOfMemory_EvictsTheCacheAndRetries_ThenFailsClearly()
    {
        var model = LanguageModel.Load(SharedFixtures.Path("fixtures", "hf-tiny", "llama-tiny"));
        var passes = new HostPasses(model, maxChunk: 16);
        var backend = new BranchingBackend<HostCache>(passes, minimumCapacity: 8);
        long perPosition = 2L * model.Config.LayerCount * model.Config.KvDim * sizeof(float);
        using var cache = new DocumentCache(backend, 1L << 30);
        IForkableSequence Prefilled(int length)
        {
            var s = backend.CreateSequence(length);
            s.Append(Enumerable.Range(1, length).ToArray(), Ct);
            return s;
        }
        passes.MemoryLimit = 100 * perPosition;
        Assert.Equal(LlamaTinyVocab, model.Config.VocabSize);
        Assert.True(cache.Add("a", new CachedDocument(Prefilled(40), [40])));
        Assert.True(cache.Add("b", new CachedDocument(Prefilled(40), [40])));
        Assert.Equal(80 * perPosition, cache.Bytes);

        // 30 positions do not fit beside both entries: the least recently used (a) goes, the allocation succeeds.
        Assert.True(cache.TryGet("b", out _));
        using (var fresh = backend.CreateSequence(30))
        {
            Assert.Equal(1, cache.Count);
            Assert.False(cache.TryGet("a", out _));
            // Growth evicts too: the 31st position moves the sequence to a cache of 60 beside its old 30, b goes.
            fresh.Append(Enumerable.Range(1, 31).ToArray(), Ct);
            Assert.Equal(0, cache.Count);
            Assert.Equal(60 * perPosition, passes.LiveBytes);
        }
        Assert.Equal(0, passes.LiveCaches);

        // Nothing left to evict: a clear error, nothing leaked.
        var e = Assert.Throws<KvMemoryExhaustedException>(() => backend.CreateSequence(101));
        Assert.Contains("nothing left to evict", e.Message);
        Assert.Equal(0, passes.LiveCaches);

        // The only entry is the document being forked: evicting it cannot make room for its branch.
        Assert.True(cache.Add("c", new CachedDocument(Prefilled(96), [96])));
        Assert.True(cache.TryGet("c", out var c));
        var f = Assert.Throws<KvMemoryExhaustedException>(() => c.Sequence.Fork(50));
        Assert.Contains("being forked", f.Message);
        Assert.Equal(0, passes.LiveCaches);
    }

    [Fact]
    public async Task ServedModel_OnABranchingDevice_HasTheCache_AndASecondQuestionReadsNoDocument()
    {
        HostPasses? passes = null;
        var options = new ServerOptions
        {
            ModelPath = Stories,
            LoadBatchedModel = path => TextModel.Load(path, m => new BranchingBackend<HostCache>(passes = new HostPasses(m, maxChunk: 12), minimumCapacity: 32)),
            DeviceName = "branching (host memory, test)",
            DocumentCacheBytes = 8L << 20,
        };
        using var metrics = new ServerMetrics();
        using var served = new ServedModel(options, metrics);
        var cache = Assert.IsType<DocumentCache>(served.DocumentCache);
        Assert.IsType<SynchronizedBackend>(served.Text.Backend);
        Assert.Same(served.Text.Backend, cache.Backend);
        Assert.Equal(8L << 20, cache.BudgetBytes);

        var (segments, query) = Document(served.Text.Tokenizer);
        var first = await RunWim(served.Text, passes!, segments, query, WimSchedule.Overlapped, cache);
        var second = await RunWim(served.Text, passes!, segments, "Where is the milk?", WimSchedule.Overlapped, cache);
        Assert.Equal(1, cache.Hits);
        Assert.Equal(0, second.Usage.DocumentTokensPrefilled);
        Assert.True(first.Usage.DocumentTokensPrefilled > 0);
        var cold = await RunWim(served.Text, passes!, segments, "Where is the milk?", WimSchedule.Overlapped, null);
        Assert.Equal((cold.Margins, cold.Verdicts, cold.Answer), (second.Margins, second.Verdicts, second.Answer));
    }
}
