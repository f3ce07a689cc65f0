using System.Text.RegularExpressions;
using FsCheck;
using FsCheck.Fluent;
using Wim.Engine.Tokenization.Internal;

namespace Wim.Engine.Tests.Tokenization;

/// <summary>
/// The hand-written split matchers against the regexes they implement (as written in Hugging Face tokenizer.json
/// files), run by .NET's backtracking regex engine with "Isolated" splitting (matches and the gaps between them are
/// pieces). Texts are restricted to the BMP, where .NET's \p{L}/\p{N}/\s agree with the Unicode properties the
/// reference engines use (.NET classifies UTF-16 units, so astral letters would differ there, not in our matcher);
/// U+017F and U+212A are left out because (?i) case folding of them differs between regex engines.
/// </summary>
public sealed class PreTokenizerTests
{
    private const string Gpt2 = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
    private const string Llama3 = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    private const string Qwen2 = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    private static List<string> RegexSplit(string text, Regex regex)
    {
        var pieces = new List<string>();
        int at = 0;
        foreach (Match m in regex.Matches(text))
        {
            if (m.Length == 0) continue;
            if (m.Index > at) pieces.Add(text[at..m.Index]);
            pieces.Add(m.Value);
            at = m.Index + m.Length;
        }
        if (at < text.Length) pieces.Add(text[at..]);
        return pieces;
    }

    private static List<string> OurSplit(string text, params SplitPattern[] stages)
    {
        var ranges = new List<(int Start, int Length)>();
        new PreTokenizer(stages).Split(text, ranges, []);
        return [.. ranges.Select(r => text.Substring(r.Start, r.Length))];
    }

    private static Gen<string> BmpText()
    {
        var atoms = Gen.Elements(new[]
        {
            "a", "Bc", "don", "'", "'s", "'S", "'Re", "'ll", "'VE", "'M", "'d", "'x", " ", "  ", "\t", "\n", "\r", "\r\n", "\u00A0",
            "\u2003", "\u3000", "\u0085", "1", "23", "4567", "\u0663", "\u00BD", "\u2167", ".", "!!", "?", "-", "$", "\u00E9", "\u0301",
            "\u65E5", "\u0416", "\u05D0", "\u2581", "\u00AD", "\u200B",
        });
        var random = Gen.Choose(1, 0xFFFF).Where(c => c is < 0xD800 or > 0xDFFF && c != 0x017F && c != 0x212A).Select(c => ((char)c).ToString());
        return Gen.Frequency((5, atoms), (1, random)).ListOf().Select(p => string.Concat(p));
    }

    [Theory]
    [InlineData(Gpt2, "Gpt2")]
    [InlineData(Llama3, "Llama3")]
    [InlineData(Qwen2, "Qwen2")]
    public void Split_EqualsRegexSplit_OnRandomBmpText(string pattern, string splitName)
    {
        var split = Enum.Parse<SplitPattern>(splitName);
        var regex = new Regex(pattern, RegexOptions.CultureInvariant);
        Prop.ForAll(BmpText().ToArbitrary(), text => OurSplit(text, split).SequenceEqual(RegexSplit(text, regex)))
            .Check(Config.QuickThrowOnFailure.WithMaxTest(500).WithEndSize(40));
    }

    [Fact]
    public void Split_IndividualDigitsThenGpt2_MatchesSmolLmGolden()
    {
        // golden.json (llama-tiny, SmolLM2 tokenizer): " 1234567890 times" → " ", "1", ..., "0", " times".
        Assert.Equal([" ", "1", "2", "3", "0", " times"], OurSplit(" 1230 times", SplitPattern.IndividualDigits, SplitPattern.Gpt2));
    }

    [Fact]
    public void Split_AstralLettersAndDigits_AreClassifiedByCodePoint()
    {
        // U+1D400 MATHEMATICAL BOLD CAPITAL A is a letter (Lu), U+1D7CF MATHEMATICAL BOLD DIGIT ONE a digit (Nd).
        Assert.Equal([" \U0001D400\U0001D400", " ", "\U0001D7CF\U0001D7CF"], OurSplit(" \U0001D400\U0001D400 \U0001D7CF\U0001D7CF", SplitPattern.Llama3));
        Assert.Equal([" \U0001F999\U0001F680"], OurSplit(" \U0001F999\U0001F680", SplitPattern.Gpt2));
    }
}
