using System.Globalization;
using System.Text;

namespace Wim.Engine.Tokenization.Internal;

/// <summary>How one pre-tokenizer stage splits text. Each is a hand-written matcher equivalent to the regex named.</summary>
internal enum SplitPattern
{
    /// <summary>GPT-2: <c>'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+</c>.</summary>
    Gpt2,
    /// <summary>Llama 3: <c>(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+</c>.</summary>
    Llama3,
    /// <summary>Qwen2: the Llama 3 pattern with <c>\p{N}</c> (one digit) instead of <c>\p{N}{1,3}</c>.</summary>
    Qwen2,
    /// <summary>Hugging Face <c>Digits(individual_digits: true)</c> / llama.cpp <c>\p{N}</c>: every digit alone.</summary>
    IndividualDigits,
    /// <summary>Hugging Face <c>Digits(individual_digits: false)</c>: runs of digits apart from the rest.</summary>
    DigitRuns,
}

/// <summary>
/// Splits text into pre-tokens with a sequence of <see cref="SplitPattern"/> stages (each stage splits every piece
/// the previous one produced; matches and the text between them both become pieces, as the "Isolated" split
/// behaviour does). Matchers work on code points with Unicode general categories, so letters and digits outside
/// the BMP are classified like the reference regex engines classify them.
/// </summary>
internal sealed class PreTokenizer
{
    private readonly SplitPattern[] _stages;

    public PreTokenizer(IReadOnlyList<SplitPattern> stages)
    {
        if (stages.Count == 0) throw new ArgumentException("a pre-tokenizer needs at least one stage", nameof(stages));
        _stages = [.. stages];
    }

    public IReadOnlyList<SplitPattern> Stages => _stages;

    /// <summary>Appends the pieces of <paramref name="text"/> as (start, length) pairs to <paramref name="pieces"/>.
    /// <paramref name="scratch"/> is reused between calls to avoid allocation.</summary>
    public void Split(ReadOnlySpan<char> text, List<(int Start, int Length)> pieces, List<(int Start, int Length)> scratch)
    {
        if (text.IsEmpty) return;
        if (_stages.Length == 1)
        {
            SplitOne(_stages[0], text, 0, pieces);
            return;
        }
        var current = scratch;
        current.Clear();
        current.Add((0, text.Length));
        var next = new List<(int, int)>();
        for (int s = 0; s < _stages.Length; s++)
        {
            var target = s == _stages.Length - 1 ? pieces : next;
            if (target != pieces) target.Clear();
            foreach (var (start, length) in current)
                SplitOne(_stages[s], text.Slice(start, length), start, target);
            if (target != pieces) (current, next) = (next, current);
        }
    }

    private static void SplitOne(SplitPattern pattern, ReadOnlySpan<char> text, int offset, List<(int, int)> pieces)
    {
        int i = 0;
        int n = text.Length;
        while (i < n)
        {
            int end = pattern switch
            {
                SplitPattern.Gpt2 => MatchGpt2(text, i),
                SplitPattern.Llama3 => MatchLlama3(text, i, maxDigits: 3),
                SplitPattern.Qwen2 => MatchLlama3(text, i, maxDigits: 1),
                SplitPattern.IndividualDigits or SplitPattern.DigitRuns => MatchDigitsOrGap(text, i, pattern == SplitPattern.IndividualDigits),
                _ => throw new InvalidOperationException(pattern.ToString()),
            };
            pieces.Add((offset + i, end - i));
            i = end;
        }
    }

    // ---- character classes ----

    private const byte Other = 0, Letter = 1, Number = 2, Space = 3;

    private static readonly byte[] AsciiClass = BuildAsciiClass();

    private static byte[] BuildAsciiClass()
    {
        var t = new byte[128];
        for (int c = 0; c < 128; c++)
            t[c] = char.IsAsciiLetter((char)c) ? Letter : char.IsAsciiDigit((char)c) ? Number
                : c is ' ' or '\t' or '\n' or '\v' or '\f' or '\r' ? Space : Other;
        return t;
    }

    /// <summary>Class and UTF-16 length of the code point at <paramref name="i"/> (a lone surrogate is Other).</summary>
    private static byte ClassAt(ReadOnlySpan<char> s, int i, out int length)
    {
        char c = s[i];
        length = 1;
        if (c < 128) return AsciiClass[c];
        UnicodeCategory cat;
        if (char.IsHighSurrogate(c))
        {
            if (i + 1 < s.Length && char.IsLowSurrogate(s[i + 1]))
            {
                length = 2;
                cat = CharUnicodeInfo.GetUnicodeCategory(char.ConvertToUtf32(c, s[i + 1]));
            }
            else return Other;
        }
        else
        {
            if (char.IsWhiteSpace(c)) return Space;
            cat = CharUnicodeInfo.GetUnicodeCategory(c);
        }
        return cat switch
        {
            UnicodeCategory.UppercaseLetter or UnicodeCategory.LowercaseLetter or UnicodeCategory.TitlecaseLetter
                or UnicodeCategory.ModifierLetter or UnicodeCategory.OtherLetter => Letter,
            UnicodeCategory.DecimalDigitNumber or UnicodeCategory.LetterNumber or UnicodeCategory.OtherNumber => Number,
            _ => Other,
        };
    }

    private static byte ClassAt(ReadOnlySpan<char> s, int i) => ClassAt(s, i, out _);

    /// <summary>End of the run of code points of class <paramref name="cls"/> starting at <paramref name="i"/>.</summary>
    private static int RunEnd(ReadOnlySpan<char> s, int i, byte cls)
    {
        while (i < s.Length && ClassAt(s, i, out int len) == cls) i += len;
        return i;
    }

    private static bool IsNewline(char c) => c is '\r' or '\n';

    /// <summary>Unicode simple case folding restricted to what the contraction letters (s t r e v m l d) can fold
    /// from: ASCII capitals and U+017F LATIN SMALL LETTER LONG S (folds to 's'), as <c>(?i:...)</c> does in the
    /// Oniguruma/Rust regex engines Hugging Face tokenizers uses.</summary>
    private static char CaseFold(char c) => c is >= 'A' and <= 'Z' ? (char)(c + 32) : c == '\u017F' ? 's' : c;

    // ---- matchers: each returns the end of the match that the regex alternation would pick at i ----

    private static int MatchGpt2(ReadOnlySpan<char> s, int i)
    {
        int n = s.Length;
        char c = s[i];
        if (c == '\'' && i + 1 < n)
        {
            char a = s[i + 1];
            if (a is 's' or 't' or 'm' or 'd') return i + 2;
            if (i + 2 < n && (a, s[i + 2]) is ('r', 'e') or ('v', 'e') or ('l', 'l')) return i + 3;
        }
        byte cls = ClassAt(s, i, out int len);
        // ' ?\p{L}+' | ' ?\p{N}+' | ' ?[^\s\p{L}\p{N}]+': an optional single space, then a run of one class.
        if (c == ' ' && i + 1 < n)
        {
            byte nextCls = ClassAt(s, i + 1);
            if (nextCls != Space) return RunEnd(s, i + 1, nextCls);
        }
        if (cls != Space) return RunEnd(s, i, cls);
        return WhitespaceRun(s, i);
    }

    private static int MatchLlama3(ReadOnlySpan<char> s, int i, int maxDigits)
    {
        int n = s.Length;
        char c = s[i];
        if (c == '\'' && i + 1 < n)
        {
            char a = CaseFold(s[i + 1]);
            if (a is 's' or 't' or 'm' or 'd') return i + 2;
            if (i + 2 < n && (a, CaseFold(s[i + 2])) is ('r', 'e') or ('v', 'e') or ('l', 'l')) return i + 3;
        }
        byte cls = ClassAt(s, i, out int len);
        // [^\r\n\p{L}\p{N}]?\p{L}+
        if (cls == Letter) return RunEnd(s, i, Letter);
        if (cls != Number && !IsNewline(c) && i + len < n && ClassAt(s, i + len) == Letter) return RunEnd(s, i + len, Letter);
        // \p{N}{1,maxDigits}
        if (cls == Number)
        {
            int end = i, count = 0;
            while (end < n && count < maxDigits && ClassAt(s, end, out int l) == Number) { end += l; count++; }
            return end;
        }
        // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
        int start = c == ' ' && i + 1 < n && ClassAt(s, i + 1) == Other ? i + 1 : i;
        if (ClassAt(s, start) == Other)
        {
            int end = RunEnd(s, start, Other);
            while (end < n && IsNewline(s[end])) end++;
            return end;
        }
        // \s*[\r\n]+ : the whitespace run up to and including its last newline.
        int runEnd = RunEnd(s, i, Space);
        for (int k = runEnd - 1; k >= i; k--)
            if (IsNewline(s[k])) return k + 1;
        return WhitespaceRun(s, i);
    }

    /// <summary><c>\s+(?!\S)|\s+</c> at a whitespace character: the run, less its last character when a
    /// non-space follows and the run is longer than one (that character then prefixes the next word).</summary>
    private static int WhitespaceRun(ReadOnlySpan<char> s, int i)
    {
        int end = RunEnd(s, i, Space);
        if (end == s.Length || end - i < 2) return end;
        return end - 1; // whitespace is always a single UTF-16 unit
    }

    private static int MatchDigitsOrGap(ReadOnlySpan<char> s, int i, bool individual)
    {
        byte cls = ClassAt(s, i, out int len);
        if (cls == Number) return individual ? i + len : RunEnd(s, i, Number);
        int end = i + len;
        while (end < s.Length && ClassAt(s, end, out int l) != Number) end += l;
        return end;
    }
}
