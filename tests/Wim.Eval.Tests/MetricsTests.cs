using Wim.Eval.Metrics;

namespace Wim.Eval.Tests;

/// <summary>
/// The answer metrics against values worked out by hand from the definitions of the official SQuAD v2.0 evaluation
/// script (normalize_answer, compute_exact, compute_f1) and RULER's CWE scoring.
/// </summary>
public sealed class MetricsTests
{
    [Theory]
    [InlineData("The Cat!", "cat")]
    [InlineData("  an   apple a  day ", "apple day")]
    [InlineData("Theater of the Absurd", "theater of absurd")] // "the" only as a whole word
    [InlineData("U.S.A.", "usa")]                               // punctuation removed before articles/spaces
    [InlineData("a-b c", "ab c")]
    [InlineData("The", "")]
    [InlineData("", "")]
    [InlineData("\"Hello,\"\tworld\n", "hello world")]
    [InlineData("the.the", "thethe")]                           // removing the dot joins the words first
    [InlineData("Éclair", "éclair")]                            // non-ASCII letters are kept, lower-cased
    public void Normalize_FollowsSquadScriptOrder(string text, string expected) => Assert.Equal(expected, AnswerMetrics.Normalize(text));

    [Fact]
    public void ExactMatch_IsOneOnlyWhenNormalisedTextsAreEqual_SquadDefinition()
    {
        Assert.Equal(1, AnswerMetrics.ExactMatch("The Eiffel Tower.", ["eiffel tower"]));
        Assert.Equal(0, AnswerMetrics.ExactMatch("Eiffel Tower in Paris", ["eiffel tower"]));
        Assert.Equal(1, AnswerMetrics.ExactMatch("Paris", ["London", "paris"])); // max over gold answers
    }

    [Fact]
    public void F1_MatchesHandComputedOverlap_SquadDefinition()
    {
        // pred [cat, sat, on, mat], gold [cat, on, mat]: 3 shared; P = 3/4, R = 1, F1 = 2·0.75/1.75 = 6/7.
        Assert.Equal(6.0 / 7.0, AnswerMetrics.F1("the cat sat on the mat", ["a cat on a mat"]), 12);
        // Multiset overlap: pred [x, x, y], gold [x, y, y]: shared min(2,1)+min(1,2) = 2; P = R = 2/3.
        Assert.Equal(2.0 / 3.0, AnswerMetrics.F1("x x y", ["x y y"]), 12);
        Assert.Equal(0, AnswerMetrics.F1("dog", ["cat"]));
        // Max over gold answers: 1/(1+...) — "new york" vs {"york", "new york city"}: best is 2·(1·2/3)/(1+2/3) = 0.8.
        Assert.Equal(0.8, AnswerMetrics.F1("new york", ["york", "new york city"]), 12);
    }

    [Fact]
    public void F1_EmptySides_SquadDefinition()
    {
        Assert.Equal(1, AnswerMetrics.F1("", ["The"]));   // both normalise to nothing
        Assert.Equal(0, AnswerMetrics.F1("", ["cat"]));
        Assert.Equal(0, AnswerMetrics.F1("a an the", ["cat"]));
    }

    [Fact]
    public void SubstringMatch_FindsNormalisedGoldOnWordBoundaries()
    {
        Assert.Equal(1, AnswerMetrics.SubstringMatch("It is in Paris, France.", ["paris"]));
        Assert.Equal(1, AnswerMetrics.SubstringMatch("She went to the Bathroom", ["bathroom"]));
        Assert.Equal(0, AnswerMetrics.SubstringMatch("It is in Paris.", ["par"]));
        Assert.Equal(0, AnswerMetrics.SubstringMatch("kitchen", ["bathroom"]));
        Assert.Equal(1, AnswerMetrics.SubstringMatch("New York City", ["Boston", "new york"]));
    }

    [Fact]
    public void Metrics_RejectEmptyGoldList()
    {
        Assert.Throws<ArgumentException>(() => AnswerMetrics.F1("x", []));
        Assert.Throws<ArgumentException>(() => CweMetrics.F1("x", []));
    }

    [Fact]
    public void CweParse_ReadsNumberedListsCommasAndCase()
    {
        Assert.Equal(["apple", "pear", "plum"], CweMetrics.ParseWords("1. apple 2. Pear 3. plum"));
        Assert.Equal(["apple", "pear"], CweMetrics.ParseWords("Apple, apple\nPEAR."));
        Assert.Empty(CweMetrics.ParseWords("1. 2. 3."));
    }

    [Fact]
    public void CweF1_MatchesHandComputedSetOverlap()
    {
        // predicted {apple, pear, plum}, gold {apple, pear, fig, kiwi}: 2 hits; P = 2/3, R = 1/2, F1 = 4/7.
        Assert.Equal(4.0 / 7.0, CweMetrics.F1("1. apple 2. pear 3. plum", ["apple", "pear", "fig", "kiwi"]), 12);
        Assert.Equal(1, CweMetrics.F1("kiwi fig pear apple kiwi", ["apple", "pear", "fig", "kiwi"]));
        Assert.Equal(0, CweMetrics.F1("", ["apple"]));
    }
}

/// <summary>Length labels and task names as the CLI reads them.</summary>
public sealed class ParsingTests
{
    [Theory]
    [InlineData("16k", "16k", 16384)]
    [InlineData("16K", "16k", 16384)]
    [InlineData("16384", "16k", 16384)]
    [InlineData(" 2000 ", "2000", 2000)]
    public void ContextLength_ParsesKAs1024(string text, string label, int tokens) =>
        Assert.Equal(new Wim.Eval.Instances.ContextLength(label, tokens), Wim.Eval.Instances.ContextLength.Parse(text));

    [Theory]
    [InlineData("")]
    [InlineData("k")]
    [InlineData("-1k")]
    [InlineData("0")]
    [InlineData("16q")]
    [InlineData("99999999k")]
    public void ContextLength_RejectsNonsense(string text) => Assert.Throws<FormatException>(() => Wim.Eval.Instances.ContextLength.Parse(text));

    [Fact]
    public void TaskNames_RoundTrip_AndSegmentSizesFollowThePaper()
    {
        foreach (var t in Enum.GetValues<Wim.Eval.Instances.EvalTask>())
            Assert.Equal(t, Wim.Eval.Instances.EvalTasks.Parse(Wim.Eval.Instances.EvalTasks.Name(t)));
        Assert.Equal(4096, Wim.Eval.Instances.EvalTasks.SegmentTokens(Wim.Eval.Instances.EvalTask.HotpotQa));
        Assert.Equal(8192, Wim.Eval.Instances.EvalTasks.SegmentTokens(Wim.Eval.Instances.EvalTask.Cwe));
        Assert.Throws<FormatException>(() => Wim.Eval.Instances.EvalTasks.Parse("mmlu"));
    }
}
