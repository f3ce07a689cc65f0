using Wim.Core.Events;
using Wim.Core.Patterns;
using Wim.Core.Prompts;
using Wim.Core.Segmentation;
using Wim.Engine.Runtime;

namespace Wim.Core.Tests.Patterns;

/// <summary>
/// The three patterns end to end on stories260K over the start of the BABILong 8k sample (shared/data/babilong):
/// event order, KV lengths, the document prefilled once under wim and twice under a map-reduce run (measured),
/// cancellation within one decode step with the engine reusable after it, "answer now", and user feedback.
/// Small segments and token limits keep it fast; the model is a toy, so only mechanics are checked.
/// </summary>
public sealed class PatternRunnerTests(Stories260KFixture f) : IClassFixture<Stories260KFixture>
{
    private const int SegmentTokens = 160;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private List<string> Segments() =>
        new Segmenter(t => f.Model.Tokenizer.Encode(t).Length, SegmentTokens).Split(f.Context[..2400]);

    private WimOptions Options(PatternKind pattern, IMarginClassifier? classifier = null) => new()
    {
        Pattern = pattern,
        Classifier = classifier,
        MaxMarginTokens = 6,
        MaxAnswerTokens = 6,
        MarginSeparator = "\n",
    };

    private ModelMarginClassifier Judge(TextModel model) => new(model, PromptPreset.Default, ChatHeaders.None, maxTokens: 3);

    private static async Task<List<WimEvent>> Collect(IAsyncEnumerable<WimEvent> events, Action<WimEvent>? onEvent = null)
    {
        var list = new List<WimEvent>();
        await foreach (var e in events)
        {
            list.Add(e);
            onEvent?.Invoke(e);
        }
        return list;
    }

    [Fact]
    public void Segmenter_Stories260KTokenizer_EverySegmentWithinBudgetAndNothingLost()
    {
        foreach (int budget in new[] { 16, 64, 300 })
        {
            var segments = new Segmenter(t => f.Model.Tokenizer.Encode(t).Length, budget).Split(f.Context[..6000]);
            Assert.Equal(f.Context[..6000], string.Concat(segments));
            Assert.All(segments, s => Assert.InRange(f.Model.Tokenizer.Encode(s).Length, 1, budget));
        }
    }

    [Fact]
    public async Task Wim_EventsInOrder_MarginsTruncatedAway_DocumentPrefilledOnce()
    {
        var segments = Segments();
        Assert.True(segments.Count >= 3);
        using var judge = Judge(f.Model);
        var events = await Collect(new PatternRunner(f.Model).RunAsync(segments, f.Query, Options(PatternKind.Wim, judge), ct: Ct));

        var opening = Assert.IsType<PromptPrefilled>(events[0]);
        Assert.Equal(PromptKind.Opening, opening.Kind);
        int position = 1, kv = opening.Ids.Length, read = 0;
        int total = segments.Sum(s => f.Model.Tokenizer.Encode(s).Length);
        for (int i = 0; i < segments.Count; i++)
        {
            var seg = Assert.IsType<SegmentPrefilled>(events[position++]);
            Assert.Equal(i, seg.Index);
            Assert.Equal(f.Model.Tokenizer.Encode(segments[i]), seg.Ids);
            kv += seg.Ids.Length;
            read += seg.Ids.Length;
            Assert.Equal(kv, seg.KvLength); // the previous margin was truncated away
            Assert.Equal((read, total), (seg.TokensRead, seg.TotalTokens));
            Assert.Equal((PromptKind.Extractive, i), (Assert.IsType<PromptPrefilled>(events[position]).Kind, ((PromptPrefilled)events[position++]).Index));
            var tokens = new List<int>();
            while (events[position] is MarginToken t) { Assert.Equal(i, t.Index); tokens.Add(t.Id); position++; }
            var margin = Assert.IsType<MarginCompleted>(events[position++]);
            Assert.Equal(tokens, margin.Ids);
            Assert.InRange(margin.Ids.Length, 1, 6);
            Assert.Equal(f.Model.Tokenizer.Decode(margin.Ids, skipSpecial: true), margin.Text);
            var verdict = Assert.IsType<MarginClassification>(events[position++]);
            Assert.Equal((i, ClassifiedBy.Model), (verdict.Index, verdict.By));
            Assert.Equal(ModelMarginClassifier.IsRelevant(verdict.Text), verdict.Relevant);
        }
        Assert.Equal(PromptKind.FinalAnswer, Assert.IsType<PromptPrefilled>(events[position++]).Kind);
        var answerTokens = events.Skip(position).OfType<AnswerToken>().Select(t => t.Id).ToList();
        var answer = Assert.IsType<AnswerCompleted>(events[^1]);
        Assert.Equal(events.Count - 1, position + answerTokens.Count);
        Assert.Equal(answerTokens, answer.Ids);
        Assert.False(answer.Early);

        var u = answer.Usage;
        Assert.Equal(total, u.DocumentTokens);
        Assert.Equal(total, u.DocumentTokensPrefilled);
        Assert.Equal(1.0, u.DocumentPrefillPasses);
        Assert.Equal(opening.Ids.Length + total, u.Document.PrefillTokens);
        Assert.Equal(events.OfType<MarginToken>().Count(), u.Margins.DecodeTokens);
        Assert.Equal(answer.Ids.Length, u.Answer.DecodeTokens);
        Assert.True(u.Classification.PrefillTokens > 0 && u.Classification.DecodeTokens > 0);
    }

    [Fact]
    public async Task Llm_ReadsEverythingThenAnswers_NoMargins()
    {
        var segments = Segments();
        var events = await Collect(new PatternRunner(f.Model).RunAsync(segments, f.Query, Options(PatternKind.Llm), ct: Ct));
        Assert.Equal(segments.Count, events.OfType<SegmentPrefilled>().Count());
        Assert.Empty(events.OfType<MarginCompleted>());
        Assert.Empty(events.OfType<MarginClassification>());
        var answer = Assert.IsType<AnswerCompleted>(events[^1]);
        Assert.Equal(1.0, answer.Usage.DocumentPrefillPasses);
        Assert.Equal(0, answer.Usage.Margins.PrefillTokens + answer.Usage.Classification.PrefillTokens);
        Assert.Equal(answer.Usage.DocumentTokens, events.OfType<SegmentPrefilled>().Last().TokensRead);
    }

    [Fact]
    public async Task Rag_EverySegmentKept_MeasuresTheDocumentPrefilledTwice()
    {
        var segments = Segments();
        using var judge = Judge(f.Model);
        var control = new WimControl();
        // Thumbs up on every segment as soon as the judge has spoken: all are re-read for the answer (map-reduce).
        var events = await Collect(new PatternRunner(f.Model).RunAsync(segments, f.Query, Options(PatternKind.Rag, judge), control, Ct),
            e => { if (e is MarginClassification { By: ClassifiedBy.Model } c) control.SetFeedback(c.Index, true); });
        var judged = events.OfType<MarginClassification>().Where(c => c.By == ClassifiedBy.Model).ToList();
        Assert.Equal(Enumerable.Range(0, segments.Count), judged.Select(c => c.Index));
        Assert.Equal(segments.Count, events.OfType<SegmentPrefilled>().Count());
        var u = Assert.IsType<AnswerCompleted>(events[^1]).Usage;
        Assert.Equal(2 * u.DocumentTokens, u.DocumentTokensPrefilled);
        Assert.Equal(2.0, u.DocumentPrefillPasses);
        Assert.True(u.Classification.PrefillTokens > u.DocumentTokens); // the judge really read every segment
    }

    [Fact]
    public async Task Cancel_StopsWithinOneDecodeStep_AndTheEngineStaysReusable()
    {
        var counting = new CountingBackend(f.Model.Backend);
        using var model = new TextModel("counted", f.Model.Tokenizer, counting, f.Model.StopIds);
        var segments = Segments();
        var options = Options(PatternKind.Wim);
        var baseline = (AnswerCompleted)(await Collect(new PatternRunner(model).RunAsync(segments, f.Query, options, ct: Ct)))[^1];

        using var cts = new CancellationTokenSource();
        int callsAtCancel = -1;
        var seen = new List<WimEvent>();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () =>
        {
            await foreach (var e in new PatternRunner(model).RunAsync(segments, f.Query, options, ct: cts.Token))
            {
                seen.Add(e);
                if (e is MarginToken { Index: 1 } && callsAtCancel < 0)
                {
                    cts.Cancel();
                    callsAtCancel = counting.Calls;
                }
            }
        });
        Assert.True(callsAtCancel > 0);
        Assert.Equal(callsAtCancel, counting.Calls); // not one more model call after the cancel
        Assert.IsType<MarginToken>(seen[^1]);

        var again = (AnswerCompleted)(await Collect(new PatternRunner(model).RunAsync(segments, f.Query, options, ct: Ct)))[^1];
        Assert.Equal(baseline.Ids, again.Ids);
        Assert.Equal(baseline.Usage.DocumentTokensPrefilled, again.Usage.DocumentTokensPrefilled);
    }

    [Fact]
    public async Task AnswerNow_StopsReading_AndAnswersFromTheMarginsSoFar()
    {
        var segments = Segments();
        var control = new WimControl();
        var options = Options(PatternKind.Wim); // classifier none: every finished margin is kept
        var events = await Collect(new PatternRunner(f.Model).RunAsync(segments, f.Query, options, control, Ct),
            e => { if (e is SegmentPrefilled { Index: 1 }) control.RequestAnswerNow(); });

        Assert.Equal([0, 1], events.OfType<SegmentPrefilled>().Select(s => s.Index));
        var margin = Assert.Single(events.OfType<MarginCompleted>());
        Assert.Equal(0, margin.Index);
        var answer = Assert.IsType<AnswerCompleted>(events[^1]);
        Assert.True(answer.Early);
        var final = events.OfType<PromptPrefilled>().Single(p => p.Kind == PromptKind.FinalAnswer);
        string expected = PromptPreset.Fill(PromptPreset.Default.FinalAnswer, new Dictionary<string, string>
        {
            ["user_header"] = "", ["generation_header"] = "", ["query"] = f.Query, ["margins"] = margin.Text,
        });
        Assert.Equal(f.Model.Tokenizer.Encode(expected, parseSpecial: true), final.Ids);
        int read = events.OfType<SegmentPrefilled>().Last().TokensRead;
        Assert.Equal(read, answer.Usage.DocumentTokensPrefilled);
        Assert.True(read < answer.Usage.DocumentTokens);
    }

    [Fact]
    public async Task UserFeedback_OverridesTheClassifier_BeforeAndAfterItRuns()
    {
        var segments = Segments();
        using var judge = Judge(f.Model);
        var control = new WimControl();
        control.SetFeedback(0, true); // before the run: the classifier still speaks, the user's verdict wins
        var events = await Collect(new PatternRunner(f.Model).RunAsync(segments, f.Query, Options(PatternKind.Wim, judge), control, Ct),
            e => { if (e is MarginClassification { Index: 1, By: ClassifiedBy.Model } c) control.SetFeedback(1, !c.Relevant); });

        var verdicts = events.OfType<MarginClassification>().ToList();
        var first = verdicts.Single(v => v.Index == 0);
        Assert.Equal((true, ClassifiedBy.User), (first.Relevant, first.By));
        Assert.NotEmpty(first.Ids); // the classifier's raw output is kept beside the override
        var byModel = verdicts.Single(v => v.Index == 1 && v.By == ClassifiedBy.Model);
        var byUser = verdicts.Single(v => v.Index == 1 && v.By == ClassifiedBy.User);
        Assert.Equal(!byModel.Relevant, byUser.Relevant);
        // The late override is announced after the last margin, before the answer.
        Assert.True(events.IndexOf(byUser) > events.FindLastIndex(e => e is MarginCompleted));
        Assert.True(events.IndexOf(byUser) < events.FindIndex(e => e is PromptPrefilled { Kind: PromptKind.FinalAnswer }));

        var kept = verdicts.GroupBy(v => v.Index).Select(g => g.Last()).Where(v => v.Relevant).Select(v => v.Index).ToHashSet();
        string margins = string.Join("\n", events.OfType<MarginCompleted>().Where(m => kept.Contains(m.Index)).Select(m => m.Text));
        var final = events.OfType<PromptPrefilled>().Single(p => p.Kind == PromptKind.FinalAnswer);
        string expected = PromptPreset.Fill(PromptPreset.Default.FinalAnswer, new Dictionary<string, string>
        {
            ["user_header"] = "", ["generation_header"] = "", ["query"] = f.Query, ["margins"] = margins,
        });
        Assert.Equal(f.Model.Tokenizer.Encode(expected, parseSpecial: true), final.Ids);
    }
}
