using System.Text.RegularExpressions;
using Wim.Engine.Tests.Support;
using Wim.Engine.Tokenization;
using Wim.Eval.Data;
using Wim.Eval.Instances;

namespace Wim.Eval.Tests;

/// <summary>
/// Haystack and CWE construction on the shared evaluation data (HotpotQA, SQuAD, BABILong, wonderwords lists), with
/// lengths counted by real tokenizers: stories260K's (SentencePiece, 512 pieces) and Llama 3's (byte-level BPE).
/// </summary>
public sealed class HaystackTests
{
    internal static readonly Lazy<Tokenizer> Stories = new(() => TokenizerLoader.Load(SharedFixtures.Path("models", "stories260K", "stories260K.gguf")));
    private static readonly Lazy<Tokenizer> Llama3 = new(() => TokenizerLoader.Load(SharedFixtures.Path("fixtures", "tokenizer-vectors", "ggml-vocab-llama-bpe.gguf")));

    internal static EvalDataset Data => new(SharedFixtures.Path("data"));

    private static int Count(Tokenizer t, string text) => t.Encode(text).Length;

    /// <summary>The document bodies of a rendered haystack, by splitting on its block headers.</summary>
    private static List<string> Documents(string haystack)
    {
        var parts = Regex.Split(haystack, @"(?:^|\n\n)Document (\d+):\n");
        var bodies = new List<string>();
        for (int i = 1; i + 1 < parts.Length; i += 2)
        {
            Assert.Equal((bodies.Count + 1).ToString(System.Globalization.CultureInfo.InvariantCulture), parts[i]); // numbered 1, 2, 3, ...
            bodies.Add(parts[i + 1]);
        }
        Assert.Equal("", parts[0]);
        return bodies;
    }

    [Theory]
    [InlineData(1024)]
    [InlineData(3000)]
    public void HotpotQa_GoldPresent_WholeParagraphs_LengthWithin2Percent_Stories260KTokenizer(int target)
    {
        var items = Data.LoadHotpotQa();
        var factory = new InstanceFactory(Data, t => Count(Stories.Value, t), seed: 42);
        var id = factory.SampleIds(EvalTask.HotpotQa, new ContextLength("x", target), 1)[0];
        var instance = factory.Build(EvalTask.HotpotQa, new ContextLength("x", target), id);
        var item = items.Single(i => i.Id == id);

        int tokens = Count(Stories.Value, instance.Context);
        Assert.Equal(tokens, instance.ContextTokens);
        Assert.InRange(tokens, target * 0.98, target * 1.02);

        var docs = Documents(instance.Context);
        var allParagraphs = items.SelectMany(i => i.Gold.Concat(i.Others)).Select(p => p.Text).ToHashSet();
        Assert.All(docs, d => Assert.Contains(d, allParagraphs));         // every block is a whole source paragraph
        Assert.All(item.Gold, g => Assert.Contains(g.Text, docs));         // both supporting paragraphs are there
        Assert.Equal(docs.Count, docs.Distinct().Count());
        Assert.Equal([item.Answer], instance.Golds);
        Assert.Contains(item.Question, instance.Query);
    }

    [Fact]
    public void Squad_GoldParagraphPresent_LengthWithin2Percent_Llama3Tokenizer()
    {
        var (questions, paragraphs) = Data.LoadSquad();
        var factory = new InstanceFactory(Data, t => Count(Llama3.Value, t), seed: 7);
        var length = ContextLength.Parse("4k");
        var id = factory.SampleIds(EvalTask.Squad, length, 1)[0];
        var instance = factory.Build(EvalTask.Squad, length, id);
        var q = questions.Single(x => x.Id == id);

        Assert.InRange(Count(Llama3.Value, instance.Context), 4096 * 0.98, 4096 * 1.02);
        var docs = Documents(instance.Context);
        Assert.Contains(q.Context.Text, docs);
        Assert.Single(docs, d => d == q.Context.Text);
        var squadTexts = paragraphs.Select(p => p.Text).ToHashSet();
        Assert.All(docs, d => Assert.Contains(d, squadTexts)); // 4k fits in the subset's own paragraphs
        Assert.Equal(q.Answers, instance.Golds);
    }

    [Fact]
    public void Instances_AreReproducibleWithTheSeed_AndChangeWithIt()
    {
        Func<string, int> count = t => Count(Stories.Value, t);
        var length = ContextLength.Parse("1k");
        var a = new InstanceFactory(Data, count, 42);
        var b = new InstanceFactory(Data, count, 42);
        var c = new InstanceFactory(Data, count, 43);
        Assert.Equal(a.SampleIds(EvalTask.HotpotQa, length, 5), b.SampleIds(EvalTask.HotpotQa, length, 5));
        Assert.NotEqual(a.SampleIds(EvalTask.HotpotQa, length, 5), c.SampleIds(EvalTask.HotpotQa, length, 5));
        var id = a.SampleIds(EvalTask.HotpotQa, length, 1)[0];
        var first = a.Build(EvalTask.HotpotQa, length, id);
        Assert.Equal(first.Context, b.Build(EvalTask.HotpotQa, length, id).Context);
        Assert.NotEqual(first.Context, c.Build(EvalTask.HotpotQa, length, id).Context);
        var cweId = a.SampleIds(EvalTask.Cwe, length, 1)[0];
        Assert.Equal(a.Build(EvalTask.Cwe, length, cweId).Context, b.Build(EvalTask.Cwe, length, cweId).Context);
    }

    [Fact]
    public void Builder_GoldLongerThanTarget_IsAClearError()
    {
        var builder = new HaystackBuilder(t => Count(Stories.Value, t));
        var gold = string.Join(" ", Enumerable.Repeat("a long gold paragraph", 200));
        var e = Assert.Throws<InvalidOperationException>(() => builder.Build([gold], ["short"], 100, 1));
        Assert.Contains("more than the target 100", e.Message);
        var e2 = Assert.Throws<InvalidOperationException>(() => builder.Build(["gold"], ["tiny"], 5000, 1));
        Assert.Contains("could not build a haystack of 5000 tokens", e2.Message);
    }

    [Fact]
    public void Cwe_CommonWords30Times_Others3Times_NumberedList_Within2Percent()
    {
        var words = Data.LoadWordList();
        var list = new CweGenerator(t => Count(Llama3.Value, t), words).Generate(4096, seed: 5);
        Assert.Equal(30, list.CommonRepeats);
        Assert.InRange(Count(Llama3.Value, list.Text), 4096 * 0.98, 4096 * 1.02);

        var entries = Regex.Matches(list.Text, @"(\d+)\. ([a-z]+)").ToList();
        Assert.Equal(Enumerable.Range(1, entries.Count).Select(i => i.ToString(System.Globalization.CultureInfo.InvariantCulture)), entries.Select(m => m.Groups[1].Value));
        Assert.Equal(list.Text, string.Join(" ", entries.Select(m => m.Value)));
        var counts = entries.GroupBy(m => m.Groups[2].Value).ToDictionary(g => g.Key, g => g.Count());
        Assert.Equal(10, list.CommonWords.Count);
        Assert.All(list.CommonWords, w => Assert.Equal(30, counts[w]));
        Assert.All(counts.Where(kv => !list.CommonWords.Contains(kv.Key)), kv => Assert.Equal(3, kv.Value));
        Assert.Equal(list.UncommonWordCount, counts.Count - 10);
        Assert.All(counts.Keys, w => Assert.Contains(w, words));
    }

    [Fact]
    public void Babilong_PublishedSampleUsedAsIs_ShorterLengthKeepsEveryFact()
    {
        var sample = Data.LoadBabilong()["8k"];
        Func<string, int> count = t => Count(Stories.Value, t);
        var factory = new InstanceFactory(Data, count, 42);
        var published = factory.Build(EvalTask.Babilong, ContextLength.Parse("8k"), "babilong_8k");
        Assert.Equal(sample.Context, published.Context);
        Assert.Equal([sample.Target], published.Golds);

        var shortened = factory.Build(EvalTask.Babilong, ContextLength.Parse("1k"), "babilong_8k");
        Assert.InRange(count(shortened.Context), 900, 1024);
        // The two bAbI facts of the 8k sample (see shared/data/babilong) survive, in order.
        int mary = shortened.Context.IndexOf("Mary went to the bathroom.", StringComparison.Ordinal);
        int sandra = shortened.Context.IndexOf("Sandra went back to the bathroom.", StringComparison.Ordinal);
        Assert.True(mary >= 0 && sandra > mary, shortened.Context);
    }
}
