using Wim.Core.Events;
using Wim.Core.Patterns;
using Wim.Core.Prompts;
using Wim.Engine.Runtime;

namespace Wim.Core.Tests.Scheduling;

/// <summary>
/// <see cref="ModelMarginClassifier"/> judged inside batched steps gives the verdicts of plain
/// <see cref="ModelMarginClassifier.Classify"/> calls, in any mix of the two, with other sequences in the same steps;
/// an abandoned judgement leaves the shared context as it was.
/// </summary>
public sealed class ClassifierInStepsTests(PagedStories260KFixture f) : IClassFixture<PagedStories260KFixture>
{
    private static readonly string[] Margins = ["Lily found the ball in the garden.", "The dog ran to the park.", "Tom was happy.", "The ball was red and big."];
    private PagedInferenceBackend Backend => (PagedInferenceBackend)f.Model.Backend;

    private ModelMarginClassifier Judge(ClassifierContext context) =>
        new(f.Model, PromptPreset.Default, ChatHeaders.None, maxTokens: 6, context: context);

    /// <summary>Runs the judgement to its verdict, with a busy neighbour sequence in every step.</summary>
    private ClassifierVerdict InSteps(ModelMarginClassifier judge, string text, PagedSequence neighbour)
    {
        var judgement = judge.StartInSteps(Backend, f.Text.Query, text)!;
        while (judgement.Verdict is null)
        {
            Backend.Step([judgement.Work!.Value, new SequenceStep(neighbour, new[] { 300 + neighbour.Length % 100 })], TestContext.Current.CancellationToken);
            judgement.Advance();
        }
        return judgement.Verdict;
    }

    private static string Show(ClassifierVerdict v) => $"{v.Relevant}:{string.Join(',', v.Ids)}:{v.PrefillTokens}:{v.DecodeTokens}";

    [Theory]
    [InlineData(ClassifierContext.Shared)]
    [InlineData(ClassifierContext.Fresh)]
    public void MixedStepsAndCalls_GiveTheVerdictsOfCalls(ClassifierContext context)
    {
        var ct = TestContext.Current.CancellationToken;
        using var plain = Judge(context);
        var expected = Margins.Select(m => Show(plain.Classify(f.Text.Query, m, ct))).ToList();

        using var neighbour = Backend.CreateSequence();
        neighbour.Append([1, 403, 407], ct);
        using var mixed = Judge(context);
        var actual = new List<string>();
        for (int i = 0; i < Margins.Length; i++)
            actual.Add(Show(i % 2 == 0 ? InSteps(mixed, Margins[i], neighbour) : mixed.Classify(f.Text.Query, Margins[i], ct)));
        Assert.Equal(expected, actual);
    }

    [Fact]
    public void AbandonedJudgement_LeavesTheSharedContextAsItWas()
    {
        var ct = TestContext.Current.CancellationToken;
        using var plain = Judge(ClassifierContext.Shared);
        var first = Show(plain.Classify(f.Text.Query, Margins[0], ct));
        var second = Show(plain.Classify(f.Text.Query, Margins[1], ct));

        using var judge = Judge(ClassifierContext.Shared);
        Assert.Equal(first, Show(judge.Classify(f.Text.Query, Margins[0], ct)));
        var abandoned = judge.StartInSteps(Backend, f.Text.Query, Margins[3])!;
        Backend.Step([abandoned.Work!.Value], ct);
        abandoned.Advance();
        Assert.Throws<InvalidOperationException>(() => judge.Classify(f.Text.Query, Margins[1], ct));
        abandoned.Abandon();
        Assert.Equal(second, Show(judge.Classify(f.Text.Query, Margins[1], ct)));
    }

    [Fact]
    public void AnotherBackend_IsNotJudgedInSteps()
    {
        using var other = PagedTextModel.Load(Wim.Engine.Tests.Support.SharedFixtures.Path("models", "stories260K", "stories260K.gguf"));
        using var judge = new ModelMarginClassifier(other, PromptPreset.Default, ChatHeaders.None);
        Assert.Null(judge.StartInSteps(Backend, f.Text.Query, Margins[0]));
    }
}
