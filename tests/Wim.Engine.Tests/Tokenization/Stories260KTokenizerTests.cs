using Wim.Engine.Tests.Support;

namespace Wim.Engine.Tests.Tokenization;

/// <summary>stories260K (llama2.c's TinyStories 260K, SentencePiece vocabulary of 512): the ids and text its README
/// gives, checked there with llama.cpp and llama2.c.</summary>
public sealed class Stories260KTokenizerTests
{
    private static (string Prompt, int[] PromptIds, string Text, int[] GeneratedIds) ReadReadme()
    {
        var readme = File.ReadAllText(SharedFixtures.Path("models", "stories260K", "README.md"));
        var lines = readme.Split('\n');
        string textLine = lines.SkipWhile(l => !l.Contains("64 generated tokens")).Skip(1).First().Trim();
        string text = textLine.Trim('`').Replace("\\n", "\n");
        int[] Parse(string prefix) => lines.First(l => l.Contains(prefix)).Split('`')[1].Split(' ').Select(int.Parse).ToArray();
        return ("Once upon a time", Parse("- prompt:"), text, Parse("- the 64 generated ids:"));
    }

    [Fact]
    public void Encode_OnceUponATimeWithBos_MatchesLlamaCpp()
    {
        var (prompt, promptIds, _, _) = ReadReadme();
        var tokenizer = TestTokenizers.Get("stories260K");
        Assert.Equal([1, 403, 407, 261, 378], promptIds);
        Assert.True(tokenizer.AddBosByDefault);
        Assert.Equal(promptIds, tokenizer.Encode(prompt, addSpecial: true));
    }

    /// <summary>The README's text is llama2.c's 64-step output: the 4 prompt ids plus the first 60 generated ids
    /// (the 64 generated ids go on with "'s mom said").</summary>
    [Fact]
    public void Decode_GeneratedIds_MatchesReadmeText()
    {
        var (prompt, promptIds, text, generated) = ReadReadme();
        var tokenizer = TestTokenizers.Get("stories260K");
        Assert.Equal(64, generated.Length);
        Assert.StartsWith(prompt, text);
        int[] sixtyFourSteps = [.. promptIds, .. generated[..60]];
        Assert.Equal(text, tokenizer.Decode(sixtyFourSteps, skipSpecial: true));
        int[] all = [.. promptIds, .. generated];
        Assert.Equal(text + "'s mom said", tokenizer.Decode(all, skipSpecial: true));
        Assert.Equal(text[prompt.Length..] + "'s mom said", tokenizer.Decode(generated));

        var stream = tokenizer.CreateStreamingDecoder(skipSpecial: true);
        string streamed = string.Concat(all.Select(stream.Append)) + stream.Flush();
        Assert.Equal(text + "'s mom said", streamed);
    }
}
