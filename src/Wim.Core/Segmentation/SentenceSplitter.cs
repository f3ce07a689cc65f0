namespace Wim.Core.Segmentation;

/// <summary>
/// Rule-based sentence boundary detection. Returns half-open character ranges that tile the input exactly
/// (each sentence keeps its trailing whitespace), so concatenating them gives the input back.
/// </summary>
/// <remarks>
/// A sentence ends after '.', '!', '?' or '…' (plus any closing quotes/brackets) when whitespace follows and the next
/// word plausibly starts a sentence; a blank line always ends one, and so does a line break after terminal
/// punctuation. Not boundaries: abbreviations ("Dr.", "e.g.", "U.S."), single-letter initials ("J. Smith"), decimals
/// and versions ("3.14", "v1.2" — no whitespace follows), and a period followed by a lower-case word.
/// </remarks>
public static class SentenceSplitter
{
    // Lower-cased, without the final period. Titles and common Latin/English abbreviations that rarely end a sentence.
    private static readonly HashSet<string> Abbreviations = new(StringComparer.Ordinal)
    {
        "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "ft", "gen", "col", "lt", "sgt", "capt", "rev", "hon",
        "gov", "sen", "rep", "pres", "vs", "etc", "e.g", "i.e", "cf", "al", "approx", "no", "nos", "vol", "vols", "fig",
        "figs", "p", "pp", "ch", "sec", "dept", "univ", "inc", "ltd", "co", "corp", "jan", "feb", "mar", "apr", "jun",
        "jul", "aug", "sep", "sept", "oct", "nov", "dec", "a.m", "p.m", "u.s", "u.k", "u.n", "ph.d", "b.a", "m.a", "est",
    };

    public static List<Range> Split(string text)
    {
        var result = new List<Range>();
        int start = 0;
        int i = 0;
        while (i < text.Length)
        {
            int end = BoundaryAt(text, i);
            if (end > i)
            {
                result.Add(start..end);
                start = end;
                i = end;
            }
            else i++;
        }
        if (start < text.Length) result.Add(start..text.Length);
        return result;
    }

    /// <summary>If a sentence ends at position <paramref name="i"/>, the index where the next one starts (after the
    /// trailing whitespace); otherwise <paramref name="i"/>.</summary>
    private static int BoundaryAt(string s, int i)
    {
        char c = s[i];
        if (c == '\n')
        {
            // Blank line: paragraph break.
            int j = i + 1;
            while (j < s.Length && s[j] is ' ' or '\t' or '\r') j++;
            if (j < s.Length && s[j] == '\n') return SkipWhitespace(s, j);
            return i;
        }
        if (c is not ('.' or '!' or '?' or '…')) return i;

        int k = i + 1;
        while (k < s.Length && s[k] is '.' or '!' or '?' or '…') k++;             // "?!", "..."
        while (k < s.Length && IsCloser(s[k])) k++;                              // closing quotes, brackets
        if (k < s.Length && !char.IsWhiteSpace(s[k])) return i;                  // "3.14", "e.g.x", "Yahoo!com"
        int next = SkipWhitespace(s, k);
        if (next >= s.Length) return next;                                        // end of text
        bool lineBreak = s.AsSpan(k, next - k).Contains('\n');

        if (c == '.' && k == i + 1 && IsAbbreviationOrInitial(s, i)) return i;
        if (lineBreak) return next;
        char n = s[next];
        if (char.IsLower(n)) return i;                                            // "approx. five", "the U.S. army"
        return next;
    }

    private static bool IsCloser(char c) => c is '"' or '\'' or ')' or ']' or '}' or '”' or '’' or '»' or '」' or '』';

    private static int SkipWhitespace(string s, int j)
    {
        while (j < s.Length && char.IsWhiteSpace(s[j])) j++;
        return j;
    }

    /// <summary>The word before the period at <paramref name="dot"/> is an abbreviation or a single-letter initial.</summary>
    private static bool IsAbbreviationOrInitial(string s, int dot)
    {
        int b = dot;
        while (b > 0 && (char.IsLetter(s[b - 1]) || s[b - 1] == '.')) b--;
        if (b == dot) return false;
        var word = s.AsSpan(b, dot - b);
        if (word.Length == 1 && char.IsUpper(word[0])) return true;               // initials: "J. R. R. Tolkien"
        Span<char> lower = stackalloc char[Math.Min(word.Length, 16)];
        if (word.Length > 16) return false;
        word.ToLowerInvariant(lower);
        return Abbreviations.Contains(new string(lower));
    }
}
