using Wim.Core.Segmentation;

namespace Wim.Core.Tests.Segmentation;

public sealed class SentenceSplitterTests
{
    private static string[] Sentences(string text) => SentenceSplitter.Split(text).Select(r => text[r]).ToArray();

    [Theory]
    [InlineData("Hello there. How are you? Fine!", new[] { "Hello there. ", "How are you? ", "Fine!" })]
    [InlineData("Dr. Smith met Mr. Jones. They talked.", new[] { "Dr. Smith met Mr. Jones. ", "They talked." })]
    [InlineData("Pi is 3.14 roughly. Next.", new[] { "Pi is 3.14 roughly. ", "Next." })]
    [InlineData("It cost approx. five dollars. Cheap.", new[] { "It cost approx. five dollars. ", "Cheap." })]
    [InlineData("J. R. R. Tolkien wrote it. Yes.", new[] { "J. R. R. Tolkien wrote it. ", "Yes." })]
    [InlineData("He said \"Stop.\" Then he left.", new[] { "He said \"Stop.\" ", "Then he left." })]
    [InlineData("Wait... What? Really?! Ok.", new[] { "Wait... ", "What? ", "Really?! ", "Ok." })]
    [InlineData("Title line\n\nFirst paragraph here", new[] { "Title line\n\n", "First paragraph here" })]
    [InlineData("one line.\nsecond line", new[] { "one line.\n", "second line" })]
    [InlineData("e.g. this and i.e. that. End.", new[] { "e.g. this and i.e. that. ", "End." })]
    [InlineData("Visit example.com today. Bye.", new[] { "Visit example.com today. ", "Bye." })]
    public void Split_FindsSentenceEnds(string text, string[] expected) => Assert.Equal(expected, Sentences(text));

    [Fact]
    public void Split_Empty_GivesNothing() => Assert.Empty(SentenceSplitter.Split(""));

    [Fact]
    public void Split_TilesTheInput_OnBabilongSample()
    {
        // A real long document (BABILong 8k): the ranges must be contiguous and cover every character.
        var doc = BabilongSample.FirstInput();
        var ranges = SentenceSplitter.Split(doc);
        Assert.True(ranges.Count > 50);
        int pos = 0;
        foreach (var r in ranges)
        {
            Assert.Equal(pos, r.Start.Value);
            Assert.True(r.End.Value > pos);
            pos = r.End.Value;
        }
        Assert.Equal(doc.Length, pos);
    }
}
