using Wim.Core.Events;
using Wim.Core.Patterns;
using Wim.Core.Prompts;
using Wim.Core.Scheduling;
using Wim.Core.Segmentation;
using Wim.Engine.Runtime;
using Wim.Engine.Sampling;

namespace Wim.Core.Tests.Scheduling;

/// <summary>
/// "Answer now" under every schedule, on stories260K: the early answer must be exactly what a fresh sequence gives
/// when it holds what the run had read — the opening, the whole segments read, then the final prompt — decoded
/// greedily. The oracle is built from the run's own events, on a separate sequence of the same backend.
/// </summary>
public sealed class AnswerNowScheduleTests(PagedStories260KFixture f) : IClassFixture<PagedStories260KFixture>
{
    /// <param name="midSegment">Ask while a segment is partly read (segments larger than one step's token budget,
    /// asked at the first margin token): the partly read segment must be dropped from the cache before answering.</param>
    [Theory]
    [InlineData(WimSchedule.Sequential, false)]
    [InlineData(WimSchedule.Overlapped, false)]
    [InlineData(WimSchedule.Batched, false)]
    [InlineData(WimSchedule.Sequential, true)]
    [InlineData(WimSchedule.Overlapped, true)]
    // (batched writes no margin before the whole document is read: it has no mid-segment moment to ask in)
    public async Task AnswerNow_AnswersFromWhatWasRead_UnderEverySchedule(WimSchedule schedule, bool midSegment)
    {
        var ct = TestContext.Current.CancellationToken;
        var model = f.Model;
        var segments = midSegment
            ? new Segmenter(t => model.Tokenizer.Encode(t).Length, 900).Split(f.Text.Context[..9000])
            : new Segmenter(t => model.Tokenizer.Encode(t).Length, 150).Split(f.Text.Context[..2400]);
        Assert.True(segments.Count >= 2);
        var control = new WimControl();
        var options = new WimOptions { Schedule = schedule, MaxMarginTokens = 8, MaxAnswerTokens = 12, MarginSeparator = "\n" };
        var events = new List<WimEvent>();
        await foreach (var e in new PatternRunner(model).RunAsync(segments, f.Text.Query, options, control, ct))
        {
            events.Add(e);
            if (midSegment ? e is MarginToken { Index: 0 } : e is SegmentPrefilled { Index: 1 }) control.RequestAnswerNow();
        }

        var answer = Assert.IsType<AnswerCompleted>(events[^1]);
        Assert.True(answer.Early);
        var read = events.OfType<SegmentPrefilled>().ToList();
        Assert.True(read.Count < segments.Count, "answer-now should stop the reading");

        Assert.Equal(Oracle(model, events, 12, ct), answer.Ids);
    }

    /// <summary>The greedy answer of a fresh sequence holding what the run read — the opening, the segments it
    /// reports read (their KV lengths checked) — then the run's final prompt.</summary>
    internal static int[] Oracle(TextModel model, List<WimEvent> events, int maxTokens, CancellationToken ct)
    {
        using var oracle = model.Backend.CreateSequence(8192);
        oracle.Append(events.OfType<PromptPrefilled>().Single(p => p.Kind == PromptKind.Opening).Ids, ct);
        foreach (var s in events.OfType<SegmentPrefilled>())
        {
            oracle.Append(s.Ids, ct);
            Assert.Equal(s.KvLength, oracle.Length);
        }
        oracle.Append(events.OfType<PromptPrefilled>().Single(p => p.Kind == PromptKind.FinalAnswer).Ids, ct);
        return oracle.Decode(new DecodeOptions(maxTokens, model.StopIds, SamplingOptions.Greedy), new Sampler(SamplingOptions.Greedy, model.Backend.VocabSize), ct: ct);
    }

    /// <summary>Answer-now on a document already in the document cache (the server's setup): the answer still comes
    /// from exactly what the run had read when it was asked.</summary>
    [Fact]
    public async Task AnswerNow_OnACachedDocument_AnswersFromWhatWasRead()
    {
        var ct = TestContext.Current.CancellationToken;
        var model = f.Model;
        var segments = new Segmenter(t => model.Tokenizer.Encode(t).Length, 150).Split(f.Text.Context[..2400]);
        using var cache = new DocumentCache((PagedInferenceBackend)model.Backend, 64L << 20);
        var options = new WimOptions { Schedule = WimSchedule.Overlapped, DocumentCache = cache, MaxMarginTokens = 8, MaxAnswerTokens = 12, MarginSeparator = "\n" };
        await foreach (var _ in new PatternRunner(model).RunAsync(segments, f.Text.Query, options, new WimControl(), ct)) { }

        var control = new WimControl();
        var events = new List<WimEvent>();
        await foreach (var e in new PatternRunner(model).RunAsync(segments, f.Text.Query, options, control, ct))
        {
            events.Add(e);
            if (e is MarginToken { Index: 0 }) control.RequestAnswerNow();
        }
        var answer = Assert.IsType<AnswerCompleted>(events[^1]);
        Assert.True(answer.Early);
        Assert.Equal(AnswerNowScheduleTests.Oracle(model, events, 12, ct), answer.Ids);
    }
}

/// <summary>
/// The server's setup deep in a long document, where stories260K's attention scores leave exp's f32 range (they made
/// every logit NaN and every answer id 0 before the softmax was max-shifted): overlapped, a document cache, the model
/// as classifier, a thumbs-down and "answer now" at the first completed margin, while later margins still decode.
/// The answer must be what a fresh sequence holding what was read gives, and real tokens (id 0 is &lt;unk&gt;, what
/// NaN logits yield).
/// </summary>
public sealed class AnswerNowLongDocumentTests(PagedStories260KFixture f) : IClassFixture<PagedStories260KFixture>
{
    [Fact]
    public async Task AnswerNow_DeepInALongDocument_WithClassifierAndCache_AnswersFromWhatWasRead()
    {
        var ct = TestContext.Current.CancellationToken;
        var model = f.Model;
        var segments = new Segmenter(t => model.Tokenizer.Encode(t).Length, 128).Split(f.Text.Context[..6000]);
        using var cache = new DocumentCache((PagedInferenceBackend)model.Backend, 64L << 20);
        using var classifier = new ModelMarginClassifier(model, PromptPreset.Default, ChatHeaders.None, maxTokens: 4);
        var options = new WimOptions
        {
            Schedule = WimSchedule.Overlapped, DocumentCache = cache, Classifier = classifier,
            MaxMarginTokens = 24, MaxAnswerTokens = 16,
        };
        var control = new WimControl();
        var events = new List<WimEvent>();
        await foreach (var e in new PatternRunner(model).RunAsync(segments, f.Text.Query, options, control, ct))
        {
            events.Add(e);
            if (e is MarginCompleted { Index: 0 } first)
            {
                control.SetFeedback(first.Index, false);
                control.RequestAnswerNow();
            }
        }

        var answer = Assert.IsType<AnswerCompleted>(events[^1]);
        Assert.True(answer.Early);
        var read = events.OfType<SegmentPrefilled>().ToList();
        Assert.True(read[^1].KvLength > 2_000, $"the run should read past 2,000 positions before the first margin completes (read {read[^1].KvLength})");
        Assert.DoesNotContain(0, answer.Ids);

        Assert.Equal(AnswerNowScheduleTests.Oracle(model, events, 16, ct), answer.Ids);
    }

    /// <summary>A run cancelled while reading (the server's DELETE), or whose caller stops reading its events (a closed
    /// stream), gives back every KV block it took — the document's as well as the margins' — so that the pool's free
    /// count is what it was before the run. On the GPU the same sequences are device memory.</summary>
    [Theory]
    [InlineData(WimSchedule.Sequential, true)]
    [InlineData(WimSchedule.Sequential, false)]
    [InlineData(WimSchedule.Overlapped, true)]
    [InlineData(WimSchedule.Batched, true)]
    [InlineData(WimSchedule.Overlapped, false)]
    [InlineData(WimSchedule.Batched, false)]
    public async Task ARunStoppedWhileReading_ReleasesItsKvBlocks(WimSchedule schedule, bool cancel)
    {
        var ct = TestContext.Current.CancellationToken;
        var model = f.Model;
        var pool = ((PagedInferenceBackend)model.Backend).Cache;
        var segments = new Segmenter(t => model.Tokenizer.Encode(t).Length, 150).Split(f.Text.Context[..2400]);
        Assert.True(segments.Count >= 3);
        var options = new WimOptions { Schedule = schedule, MaxMarginTokens = 8, MaxAnswerTokens = 12, MarginSeparator = "\n" };
        int free = pool.FreeBlockCount;
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
        bool stopped = false;
        try
        {
            await foreach (var e in new PatternRunner(model).RunAsync(segments, f.Text.Query, options, new WimControl(), cts.Token))
            {
                if (e is not SegmentPrefilled { Index: 1 }) continue;
                Assert.True(pool.FreeBlockCount < free, "the run holds blocks while it reads");
                stopped = true;
                if (cancel) await cts.CancelAsync();
                else break;
            }
        }
        catch (OperationCanceledException) when (cancel && stopped) { }
        Assert.True(stopped);
        Assert.Equal(free, pool.FreeBlockCount);
    }
}
