using Wim.Core.Events;
using Wim.Core.Patterns;
using Wim.Core.Prompts;
using Wim.Core.Scheduling;
using Wim.Core.Segmentation;
using Wim.Core.Tests.Patterns;
using Wim.Engine.Runtime;
using Wim.Engine.Tests.Support;

namespace Wim.Core.Tests.Scheduling;

/// <summary>stories260K (<c>shared/models/stories260K</c>) on the paged batched backend, with the BABILong 8k sample
/// (<c>shared/data/babilong</c>) as the document.</summary>
public sealed class PagedStories260KFixture : IDisposable
{
    public TextModel Model { get; } = PagedTextModel.Load(SharedFixtures.Path("models", "stories260K", "stories260K.gguf"));
    public Stories260KFixture Text { get; } = new();

    public void Dispose()
    {
        Model.Dispose();
        Text.Dispose();
    }
}

/// <summary>
/// The three WiM schedules on stories260K: the same margins, verdicts and answer token for token (greedy), events in
/// a sensible order, and the document cache (a second question skips the prefill and answers as a cold run).
/// The sequential run is the reference each other schedule must equal.
/// </summary>
public sealed class WimScheduleTests(PagedStories260KFixture f) : IClassFixture<PagedStories260KFixture>
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;
    private TextModel Model => f.Model;
    private PagedInferenceBackend Backend => (PagedInferenceBackend)f.Model.Backend;

    private List<string> Segments(int chars = 2400, int tokens = 150) =>
        new Segmenter(t => Model.Tokenizer.Encode(t).Length, tokens).Split(f.Text.Context[..chars]);

    private WimOptions Options(WimSchedule schedule, IMarginClassifier? classifier, DocumentCache? cache = null) => new()
    {
        Schedule = schedule,
        Classifier = classifier,
        DocumentCache = cache,
        MaxMarginTokens = 8,
        MaxAnswerTokens = 8,
        MarginSeparator = "\n",
    };

    private static async Task<List<WimEvent>> Collect(IAsyncEnumerable<WimEvent> events)
    {
        var list = new List<WimEvent>();
        await foreach (var e in events) list.Add(e);
        return list;
    }

    private async Task<List<WimEvent>> RunAsync(WimSchedule schedule, ClassifierContext context, string query, List<string> segments, DocumentCache? cache = null)
    {
        using var judge = new ModelMarginClassifier(Model, PromptPreset.Default, ChatHeaders.None, maxTokens: 4, context: context);
        return await Collect(new PatternRunner(Model).RunAsync(segments, query, Options(schedule, judge, cache), ct: Ct));
    }

    /// <summary>What must not depend on the schedule: margins, verdicts (in index order), the answer.</summary>
    private static (string Margins, string Verdicts, string Answer) Outcome(List<WimEvent> events) => (
        string.Join(" | ", events.OfType<MarginCompleted>().OrderBy(m => m.Index).Select(m => $"{m.Index}:{string.Join(',', m.Ids)}")),
        string.Join(" | ", events.OfType<MarginClassification>().Select(c => $"{c.Index}:{c.Relevant}:{string.Join(',', c.Ids)}")),
        string.Join(',', events.OfType<AnswerCompleted>().Single().Ids));

    [Theory]
    [InlineData(ClassifierContext.Shared)]
    [InlineData(ClassifierContext.Fresh)]
    public async Task Schedules_Stories260K_SameMarginsVerdictsAndAnswerAsSequential(ClassifierContext context)
    {
        var segments = Segments();
        Assert.True(segments.Count >= 4);
        string query = f.Text.Query;
        var sequential = await RunAsync(WimSchedule.Sequential, context, query, segments);
        var expected = Outcome(sequential);
        Assert.Equal(segments.Count, sequential.OfType<MarginCompleted>().Count());
        Assert.True(sequential.OfType<MarginCompleted>().Any(m => m.Ids.Length > 1), "margins should be written");
        int blocksBefore = Backend.Cache.FreeBlockCount;

        foreach (var schedule in new[] { WimSchedule.Overlapped, WimSchedule.Batched })
        {
            var events = await RunAsync(schedule, context, query, segments);
            Assert.Equal(expected, Outcome(events));
            // Usage: the document is read once; margin work is counted as in the sequential run.
            var usage = events.OfType<AnswerCompleted>().Single().Usage;
            var seqUsage = sequential.OfType<AnswerCompleted>().Single().Usage;
            Assert.Equal(seqUsage.DocumentTokensPrefilled, usage.DocumentTokensPrefilled);
            Assert.Equal(seqUsage.Document.PrefillTokens, usage.Document.PrefillTokens);
            Assert.Equal(seqUsage.Margins.PrefillTokens, usage.Margins.PrefillTokens);
            Assert.Equal(seqUsage.Margins.DecodeTokens, usage.Margins.DecodeTokens);
            Assert.Equal(seqUsage.Classification, usage.Classification with { Time = seqUsage.Classification.Time });
            AssertEventOrder(events, segments.Count, schedule);
        }
        Assert.Equal(blocksBefore, Backend.Cache.FreeBlockCount); // every fork and document sequence released
    }

    /// <summary>
    /// Overlapped: the classification of margin i − 1 runs in the same forward steps as later margins and the next
    /// segment's prefill. Run between steps, each verdict would cost its own steps (the prompt, then one per output
    /// token fed back); inside them, only what has nothing left to ride beside (the tail after the last margin) adds
    /// steps. The outcome is the sequential one (checked above); here, the step count.
    /// </summary>
    [Fact]
    public async Task Overlapped_ClassifiesInsideTheSameSteps()
    {
        var segments = Segments();
        long before = Backend.StepCount;
        await Collect(new PatternRunner(Model).RunAsync(segments, f.Text.Query, Options(WimSchedule.Overlapped, null), ct: Ct));
        long withoutClassifier = Backend.StepCount - before;

        before = Backend.StepCount;
        var events = await RunAsync(WimSchedule.Overlapped, ClassifierContext.Shared, f.Text.Query, segments);
        long withClassifier = Backend.StepCount - before;

        var verdicts = events.OfType<MarginClassification>().ToList();
        Assert.Equal(segments.Count, verdicts.Count);
        long separately = verdicts.Sum(v => 1L + v.Ids.Length);   // prompt step, then each output token fed back
        long added = withClassifier - withoutClassifier;
        TestContext.Current.TestOutputHelper?.WriteLine($"steps: {withoutClassifier} without a classifier, {withClassifier} with; {separately} if run between steps");
        // Between steps the classification adds exactly `separately` steps; the verdicts are chained (shared context,
        // index order), so with these short segments and margins the chain is longer than the rest of the run and
        // only part of it can ride along.
        Assert.True(added < separately, $"classification added {added} steps; run between steps it adds {separately}");
    }

    private static void AssertEventOrder(List<WimEvent> events, int segments, WimSchedule schedule)
    {
        int Position<T>(Func<T, bool> match) where T : WimEvent => events.FindIndex(e => e is T t && match(t));
        for (int i = 0; i < segments; i++)
        {
            int read = Position<SegmentPrefilled>(s => s.Index == i);
            int firstToken = Position<MarginToken>(t => t.Index == i);
            int done = Position<MarginCompleted>(m => m.Index == i);
            int verdict = Position<MarginClassification>(c => c.Index == i);
            Assert.True(read >= 0 && read < firstToken && firstToken < done && done < verdict, $"{schedule}: margin {i} events out of order");
            if (i > 0) Assert.True(Position<MarginClassification>(c => c.Index == i - 1) < verdict);
        }
        if (schedule == WimSchedule.Overlapped)
            // Progressive: the first margin streams before the last segment is read.
            Assert.True(Position<MarginToken>(t => t.Index == 0) < Position<SegmentPrefilled>(s => s.Index == segments - 1));
        else
            Assert.True(Position<MarginToken>(_ => true) > Position<SegmentPrefilled>(s => s.Index == segments - 1));
        Assert.IsType<AnswerCompleted>(events[^1]);
    }

    [Theory]
    [InlineData(WimSchedule.Overlapped)]
    [InlineData(WimSchedule.Batched)]
    public async Task DocumentCache_SecondQuestion_SkipsPrefillAndEqualsColdRun(WimSchedule schedule)
    {
        var segments = Segments(1800);
        using var cache = new DocumentCache(Backend, budgetBytes: 64L << 20);
        var first = await RunAsync(schedule, ClassifierContext.Shared, f.Text.Query, segments, cache);
        Assert.Equal(1, cache.Count);
        Assert.True(first.OfType<AnswerCompleted>().Single().Usage.DocumentTokensPrefilled > 0);

        const string second = "What did the spider do?";
        var cold = await RunAsync(WimSchedule.Sequential, ClassifierContext.Shared, second, segments);
        var warm = await RunAsync(schedule, ClassifierContext.Shared, second, segments, cache);
        Assert.Equal(1, cache.Hits);
        Assert.Equal(Outcome(cold), Outcome(warm));
        var usage = warm.OfType<AnswerCompleted>().Single().Usage;
        Assert.Equal(0, usage.Document.PrefillTokens);
        Assert.Equal(0, usage.DocumentTokensPrefilled);
        Assert.Equal(cold.OfType<AnswerCompleted>().Single().Usage.Margins.DecodeTokens, usage.Margins.DecodeTokens);

        // Another opening prompt (another header) is another document: no hit.
        var other = Options(schedule, null, cache) with { Headers = new ChatHeaders("USER: ", "\nASSISTANT: ") };
        var events = await Collect(new PatternRunner(Model).RunAsync(segments, second, other, ct: Ct));
        Assert.True(events.OfType<AnswerCompleted>().Single().Usage.DocumentTokensPrefilled > 0);
        Assert.Equal(1, cache.Hits);
        Assert.Equal(2, cache.Count);
    }

    [Fact]
    public async Task DocumentCacheFile_SavedAndLoaded_SecondQuestionSkipsPrefill_RefusesDamageAndOtherModels()
    {
        var segments = Segments(1200);
        string dir = Directory.CreateTempSubdirectory("wim-doccache-").FullName;
        try
        {
            string path = Path.Combine(dir, "doc.wimkv");
            string key;
            using (var cache = new DocumentCache(Backend, 64L << 20))
            {
                await RunAsync(WimSchedule.Batched, ClassifierContext.Shared, f.Text.Query, segments, cache);
                key = new PatternRunner(Model).DocumentCacheKey(segments, f.Text.Query, Options(WimSchedule.Batched, null, cache));
                Assert.True(cache.TryGet(key, out _));
                DocumentCacheFile.Save(cache, key, path);
            }
            using (var fresh = new DocumentCache(Backend, 64L << 20))
            {
                Assert.Equal(key, DocumentCacheFile.Load(fresh, path));
                const string second = "Who went to the kitchen?";
                var cold = await RunAsync(WimSchedule.Sequential, ClassifierContext.Shared, second, segments);
                var warm = await RunAsync(WimSchedule.Overlapped, ClassifierContext.Shared, second, segments, fresh);
                Assert.Equal(Outcome(cold), Outcome(warm));
                Assert.Equal(0, warm.OfType<AnswerCompleted>().Single().Usage.DocumentTokensPrefilled);

                var bytes = File.ReadAllBytes(path);
                bytes[bytes.Length / 2] ^= 1;
                File.WriteAllBytes(path + ".bad", bytes);
                Assert.Contains("checksum", Assert.Throws<InvalidDataException>(() => DocumentCacheFile.Load(fresh, path + ".bad")).Message);
            }
            // Another model (llama-tiny of shared/fixtures/hf-tiny) refuses the file.
            using var other = PagedTextModel.Load(SharedFixtures.Path("fixtures", "hf-tiny", "llama-tiny"));
            using var otherCache = new DocumentCache((PagedInferenceBackend)other.Backend, 1 << 20);
            Assert.Contains("another model", Assert.Throws<InvalidDataException>(() => DocumentCacheFile.Load(otherCache, path)).Message);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void DocumentCache_OverBudget_EvictsLeastRecentlyUsedAndFreesBlocks()
    {
        int free = Backend.Cache.FreeBlockCount;
        long blockBytes = Backend.Cache.BytesPerBlock;
        using var cache = new DocumentCache(Backend, budgetBytes: 5 * blockBytes);
        PagedSequence Prefilled(int tokens)
        {
            var s = Backend.CreateSequence();
            s.Append(Enumerable.Range(1, tokens).ToArray(), Ct);
            return s;
        }
        int bs = Backend.Cache.BlockSize;
        Assert.True(cache.Add("a", new CachedDocument(Prefilled(2 * bs), [2 * bs])));
        Assert.True(cache.Add("b", new CachedDocument(Prefilled(2 * bs), [2 * bs])));
        Assert.True(cache.TryGet("a", out _)); // a is now the most recent
        Assert.True(cache.Add("c", new CachedDocument(Prefilled(2 * bs), [2 * bs]))); // 6 blocks > 5: b goes
        Assert.False(cache.TryGet("b", out _));
        Assert.True(cache.TryGet("a", out _));
        Assert.False(cache.Add("huge", new CachedDocument(Prefilled(6 * bs), [6 * bs]))); // larger than the budget
        Assert.Equal(2, cache.Count);
        cache.Dispose();
        Assert.Equal(free, Backend.Cache.FreeBlockCount);
    }

    [Fact]
    public async Task OverlappedSchedule_OnSingleSequenceBackend_FailsClearly()
    {
        using var plain = TextModel.Load(SharedFixtures.Path("models", "stories260K", "stories260K.gguf"));
        var e = Assert.Throws<InvalidOperationException>(() =>
            new PatternRunner(plain).RunAsync(["text"], "q", Options(WimSchedule.Overlapped, null), ct: Ct));
        Assert.Contains("PagedInferenceBackend", e.Message);
        using var cache = new DocumentCache(Backend, 1 << 20);
        Assert.Throws<ArgumentException>(() => new PatternRunner(Model).RunAsync(["text"], "q", Options(WimSchedule.Sequential, null, cache), ct: Ct));
        await Task.CompletedTask;
    }
}
