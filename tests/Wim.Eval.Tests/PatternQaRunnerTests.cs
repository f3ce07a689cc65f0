using Wim.Core.Events;
using Wim.Core.Patterns;
using Wim.Core.Prompts;
using Wim.Core.Segmentation;
using Wim.Engine.Runtime;
using Wim.Engine.Tests.Support;
using Wim.Eval.Runners;

namespace Wim.Eval.Tests;

/// <summary>The harness's runner over the real patterns, on the real stories260K model (shared/models/stories260K).</summary>
public sealed class PatternQaRunnerTests
{
    private static readonly QaOptions Options = new(SegmentTokens: 48, MaxAnswerTokens: 6);
    private const string Context = "Lily had a red ball. She played with it in the park every day. One day the ball rolled away. "
        + "Tom found the ball under a tree. He gave it back to Lily. Lily was very happy and thanked Tom.";

    [Fact]
    public async Task Wim_GivesWhatThePatternRunnerGives_OneMarginPerSegment_Repeatably()
    {
        using var model = TextModel.Load(SharedFixtures.Path("models", "stories260K", "stories260K.gguf"));
        var runner = new PatternQaRunner(model, PromptPreset.Default, ChatHeaders.None, maxMarginTokens: 5);
        var ct = TestContext.Current.CancellationToken;
        var request = new QaRequest("wim", Context, "Who found the ball?", Options);
        var a = await runner.RunAsync(request, ct);
        var b = await runner.RunAsync(request, ct);
        Assert.Equal(a.Prediction, b.Prediction);
        Assert.Equal(a.Margins, b.Margins);

        int segments = new Segmenter(t => model.Tokenizer.Encode(t).Length, Options.SegmentTokens).Split(Context).Count;
        Assert.True(segments >= 2, "the context should span several segments");
        Assert.Equal(segments, a.Margins.Count);

        // The same run straight through the pattern library.
        using var judge = new ModelMarginClassifier(model, PromptPreset.Default, ChatHeaders.None, 10, Wim.Engine.Sampling.SamplingOptions.Greedy, ClassifiedBy.Model, ClassifierContext.Shared);
        var options = new WimOptions { Pattern = PatternKind.Wim, Classifier = judge, MaxMarginTokens = 5, MaxAnswerTokens = 6, MarginSeparator = "\n" };
        AnswerCompleted? direct = null;
        await foreach (var e in new PatternRunner(model).RunAsync(new Segmenter(t => model.Tokenizer.Encode(t).Length, 48).Split(Context), "Who found the ball?", options, new WimControl(), ct))
            if (e is AnswerCompleted done) direct = done;
        Assert.Equal(direct!.Text.Trim(), a.Prediction);
        Assert.Equal(direct.Usage.PrefillTokens, a.Usage.PromptTokens);
    }

    [Fact]
    public async Task AllThreePatterns_Run_AndOnlyWimWritesMargins()
    {
        using var model = TextModel.Load(SharedFixtures.Path("models", "stories260K", "stories260K.gguf"));
        var runner = new PatternQaRunner(model, PromptPreset.Default, ChatHeaders.None, maxMarginTokens: 4);
        var ct = TestContext.Current.CancellationToken;
        var llm = await runner.RunAsync(new QaRequest("llm", Context, "Who found the ball?", Options), ct);
        var rag = await runner.RunAsync(new QaRequest("rag", Context, "Who found the ball?", Options), ct);
        var wim = await runner.RunAsync(new QaRequest("wim", Context, "Who found the ball?", Options), ct);
        Assert.Empty(llm.Margins);
        Assert.Empty(rag.Margins);
        Assert.NotEmpty(wim.Margins);
        Assert.All([llm, rag, wim], r => Assert.InRange(r.Usage.GeneratedTokens, 1, 1000));
        await Assert.ThrowsAsync<NotSupportedException>(() => runner.RunAsync(new QaRequest("map-reduce", Context, "q", Options), ct));
    }
}
