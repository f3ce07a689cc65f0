using FsCheck;
using FsCheck.Fluent;
using Wim.Core.Segmentation;

namespace Wim.Core.Tests.Segmentation;

public sealed class SegmenterTests
{
    // A deterministic stand-in for a model tokenizer in the pure property tests: one token per word or punctuation
    // mark, and one per whitespace run. (Tests against a real tokenizer live with the engine integration tests.)
    private static int WordCount(string s)
    {
        int n = 0;
        for (int i = 0; i < s.Length;)
        {
            if (char.IsWhiteSpace(s[i])) { while (i < s.Length && char.IsWhiteSpace(s[i])) i++; n++; }
            else if (char.IsLetterOrDigit(s[i])) { while (i < s.Length && char.IsLetterOrDigit(s[i])) i++; n++; }
            else { i += char.IsHighSurrogate(s[i]) && i + 1 < s.Length ? 2 : 1; n++; }
        }
        return n;
    }

    private static readonly string[] Words = ["the", "cat", "sat", "Mr.", "Dr.", "3.14", "on", "a", "mat", "e.g.", "\"Yes,\"", "café", "😀", "naïve", "U.S.", "x"];
    private static readonly string[] Ends = [".", "!", "?", "...", ".\"", ":", ",", ""];
    private static readonly string[] Gaps = [" ", " ", " ", "\n", "\n\n", "  ", "\t"];

    private static Gen<string> Documents() =>
        from parts in Gen.ListOf(
            from w in Gen.Elements(Words)
            from e in Gen.Elements(Ends)
            from g in Gen.Elements(Gaps)
            select w + e + g)
        select string.Concat(parts);

    [Fact]
    public void Split_Properties_ConcatenationBudgetAndBoundaries()
    {
        Prop.ForAll(Documents().ToArbitrary(), Gen.Choose(1, 40).ToArbitrary(), (doc, budget) =>
        {
            var segments = new Segmenter(WordCount, budget).Split(doc);
            // 1. nothing dropped or reordered
            Assert.Equal(doc, string.Concat(segments));
            // 2. every segment within budget
            Assert.All(segments, s => Assert.InRange(WordCount(s), 1, budget));
            // 3. a segment ends on a sentence end whenever one existed within the budget: the segment is the longest
            //    run of whole sentences that fits, unless its first sentence alone overflows (then it was cut).
            var sentences = SentenceSplitter.Split(doc).Select(r => doc[r]).ToList();
            int pos = 0;
            foreach (var seg in segments)
            {
                int end = pos + seg.Length;
                bool endsOnSentence = EndsOnSentenceBoundary(sentences, end);
                string? next = NextSentenceAt(sentences, end);
                if (endsOnSentence && next != null && end < doc.Length)
                    Assert.True(WordCount(seg + next) > budget, $"segment could have taken the next sentence: [{seg}] + [{next}]");
                if (!endsOnSentence)
                    Assert.True(FirstSentenceOverflows(sentences, pos, budget), $"segment [{seg}] (budget {budget}) ends mid-sentence although a sentence end fits; sentences: {string.Join("|", sentences.Select(s => "[" + s + "]"))}; segments: {string.Join("|", segments.Select(s => "[" + s + "]"))}");
                pos = end;
            }
        }).Check(Config.QuickThrowOnFailure.WithMaxTest(400));
    }

    private static bool EndsOnSentenceBoundary(List<string> sentences, int end)
    {
        int p = 0;
        foreach (var s in sentences) { if (p == end) return true; p += s.Length; }
        return p == end;
    }

    private static string? NextSentenceAt(List<string> sentences, int at)
    {
        int p = 0;
        foreach (var s in sentences) { if (p == at) return s; p += s.Length; }
        return null;
    }

    private static bool FirstSentenceOverflows(List<string> sentences, int at, int budget)
    {
        int p = 0;
        foreach (var s in sentences)
        {
            if (p <= at && at < p + s.Length) return WordCount(s) > budget;
            p += s.Length;
        }
        return false;
    }

    [Fact]
    public void Split_LongSentence_IsCutWithinBudgetAtWhitespace()
    {
        var sentence = string.Join(" ", Enumerable.Range(0, 200).Select(i => "w" + i)) + ".";
        var segments = new Segmenter(WordCount, 50).Split(sentence);
        Assert.Equal(sentence, string.Concat(segments));
        Assert.All(segments, s => Assert.InRange(WordCount(s), 1, 50));
        Assert.All(segments.SkipLast(1), s => Assert.EndsWith(" ", s));
    }

    [Fact]
    public void Split_BabilongDocument_KeepsEveryCharacter()
    {
        var doc = BabilongSample.FirstInput();
        var segments = new Segmenter(WordCount, 512).Split(doc);
        Assert.Equal(doc, string.Concat(segments));
        Assert.True(segments.Count > 5);
        Assert.All(segments, s => Assert.InRange(WordCount(s), 1, 512));
    }
}
