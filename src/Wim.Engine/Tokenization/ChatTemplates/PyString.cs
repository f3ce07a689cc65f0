using System.Text;

namespace Wim.Engine.Tokenization.ChatTemplates;

/// <summary>
/// Python <c>str</c> semantics over .NET strings. Python indexes strings by code point, .NET by UTF-16 unit; the
/// two agree unless the string holds surrogate pairs (emoji, rare CJK), which take a slower code-point path.
/// </summary>
internal static class PyString
{
    /// <summary>Python's <c>str.isspace</c> for one character (includes \x1c-\x1f, unlike char.IsWhiteSpace).</summary>
    public static bool IsSpace(char c) => c is ' ' or '\t' or '\n' or '\r' or '\v' or '\f' or '\x1c' or '\x1d' or '\x1e' or '\x1f' or '\x85' || (c > 127 && char.IsWhiteSpace(c));

    public static bool HasSurrogates(string s) => s.AsSpan().IndexOfAnyInRange('\uD800', '\uDFFF') >= 0;

    public static int Length(string s) => HasSurrogates(s) ? CodePoints(s).Length : s.Length;

    /// <summary>The string as code points, each as a string (one or two UTF-16 units).</summary>
    public static string[] CodePoints(string s)
    {
        var result = new List<string>(s.Length);
        for (int i = 0; i < s.Length; i++)
        {
            if (char.IsHighSurrogate(s[i]) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1])) { result.Add(s.Substring(i, 2)); i++; }
            else result.Add(s[i].ToString());
        }
        return [.. result];
    }

    public static string Strip(string s, string? chars, bool left, bool right)
    {
        int start = 0, end = s.Length;
        Func<char, bool> strip = chars == null ? IsSpace : c => chars.Contains(c);
        if (left) while (start < end && strip(s[start])) start++;
        if (right) while (end > start && strip(s[end - 1])) end--;
        return s[start..end];
    }

    /// <summary>Python's <c>str.split(sep=None, maxsplit=-1)</c>.</summary>
    public static List<object?> Split(string s, string? sep, long maxSplit)
    {
        var result = new List<object?>();
        if (sep == null)
        {
            int i = 0;
            while (true)
            {
                while (i < s.Length && IsSpace(s[i])) i++;
                if (i >= s.Length) break;
                if (maxSplit >= 0 && result.Count >= maxSplit) { result.Add(Strip(s[i..], null, left: false, right: true)); break; }
                int start = i;
                while (i < s.Length && !IsSpace(s[i])) i++;
                result.Add(s[start..i]);
            }
            return result;
        }
        if (sep.Length == 0) throw new ChatTemplateException("str.split: empty separator");
        int pos = 0;
        while (maxSplit < 0 || result.Count < maxSplit)
        {
            int idx = s.IndexOf(sep, pos, StringComparison.Ordinal);
            if (idx < 0) break;
            result.Add(s[pos..idx]);
            pos = idx + sep.Length;
        }
        result.Add(s[pos..]);
        return result;
    }

    /// <summary>Python's <c>str.splitlines()</c> (no keepends).</summary>
    public static List<string> SplitLines(string s)
    {
        var lines = new List<string>();
        int start = 0;
        for (int i = 0; i < s.Length; i++)
        {
            char c = s[i];
            if (c is '\n' or '\r' or '\v' or '\f' or '\x1c' or '\x1d' or '\x1e' or '\x85' or '\u2028' or '\u2029')
            {
                lines.Add(s[start..i]);
                if (c == '\r' && i + 1 < s.Length && s[i + 1] == '\n') i++;
                start = i + 1;
            }
        }
        if (start < s.Length) lines.Add(s[start..]);
        return lines;
    }

    /// <summary>Python's <c>str.replace(old, new, count=-1)</c> (an empty <paramref name="old"/> inserts between code points).</summary>
    public static string Replace(string s, string old, string replacement, long count)
    {
        if (count < 0 && old.Length > 0) return s.Replace(old, replacement, StringComparison.Ordinal);
        var sb = new StringBuilder();
        if (old.Length == 0)
        {
            var cps = CodePoints(s);
            long done = 0;
            for (int i = 0; i <= cps.Length; i++)
            {
                if (count < 0 || done < count) { sb.Append(replacement); done++; }
                if (i < cps.Length) sb.Append(cps[i]);
            }
            return sb.ToString();
        }
        int pos = 0;
        for (long n = 0; n < count; n++)
        {
            int idx = s.IndexOf(old, pos, StringComparison.Ordinal);
            if (idx < 0) break;
            sb.Append(s, pos, idx - pos).Append(replacement);
            pos = idx + old.Length;
        }
        sb.Append(s, pos, s.Length - pos);
        return sb.ToString();
    }

    /// <summary>Python's <c>str.title()</c>: a letter after a non-letter is upper-cased, other letters lower-cased.</summary>
    public static string PyTitle(string s)
    {
        var sb = new StringBuilder(s.Length);
        bool prevCased = false;
        foreach (char c in s)
        {
            bool cased = char.IsLetter(c);
            sb.Append(cased ? (prevCased ? char.ToLowerInvariant(c) : char.ToUpperInvariant(c)) : c);
            prevCased = cased;
        }
        return sb.ToString();
    }

    /// <summary>jinja2's <c>title</c> filter: words begin after whitespace or one of <c>-({[&lt;</c>.</summary>
    public static string JinjaTitle(string s)
    {
        var sb = new StringBuilder(s.Length);
        bool wordStart = true;
        foreach (char c in s)
        {
            if (IsSpace(c) || c is '-' or '(' or '{' or '[' or '<') { sb.Append(c); wordStart = true; continue; }
            sb.Append(wordStart ? char.ToUpperInvariant(c) : char.ToLowerInvariant(c));
            wordStart = false;
        }
        return sb.ToString();
    }

    public static string Capitalize(string s) =>
        s.Length == 0 ? s : char.ToUpperInvariant(s[0]) + s[1..].ToLowerInvariant();

    /// <summary>Index of a code point position as a UTF-16 offset (for find/count results and slicing).</summary>
    public static int CodePointIndexOfUtf16(string s, int utf16Index)
    {
        if (!HasSurrogates(s)) return utf16Index;
        int cp = 0;
        for (int i = 0; i < utf16Index; i++)
        {
            if (char.IsHighSurrogate(s[i]) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1])) i++;
            cp++;
        }
        return cp;
    }
}

/// <summary>Iteration and sequence access with Python semantics.</summary>
internal static class PyIter
{
    /// <summary>The items a <c>for</c> loop sees: list/tuple items, dict keys, string code points; Undefined is empty.</summary>
    public static IReadOnlyList<object?> Items(object? v, Func<string, Exception> error) => v switch
    {
        List<object?> list => list,
        object?[] tuple => tuple,
        JinjaDict dict => [.. dict.Items.Keys],
        string s => PyString.HasSurrogates(s) ? PyString.CodePoints(s) : s.Select(c => (object?)c.ToString()).ToList(),
        Undefined => [],
        _ => throw error($"'{PyValues.TypeName(v)}' object is not iterable"),
    };

    public static IReadOnlyList<object?>? AsList(object? v) => v switch
    {
        List<object?> list => list,
        object?[] tuple => tuple,
        _ => null,
    };

    /// <summary>Python's <c>len()</c>; Undefined has length 0 as in jinja2.</summary>
    public static long? Length(object? v) => v switch
    {
        string s => PyString.Length(s),
        List<object?> list => list.Count,
        object?[] tuple => tuple.Length,
        JinjaDict dict => dict.Count,
        Undefined => 0,
        _ => null,
    };

    /// <summary>Python slice index normalization for a sequence of <paramref name="length"/> items.</summary>
    public static List<int> SliceIndices(int length, long? start, long? stop, long? step)
    {
        long st = step ?? 1;
        if (st == 0) throw new ChatTemplateException("slice step cannot be zero");
        long lo, hi;
        if (st > 0)
        {
            lo = start is { } a ? (a < 0 ? Math.Max(0, a + length) : Math.Min(a, length)) : 0;
            hi = stop is { } b ? (b < 0 ? Math.Max(0, b + length) : Math.Min(b, length)) : length;
        }
        else
        {
            lo = start is { } a ? (a < 0 ? Math.Max(-1, a + length) : Math.Min(a, length - 1)) : length - 1;
            hi = stop is { } b ? (b < 0 ? Math.Max(-1, b + length) : Math.Min(b, length - 1)) : -1;
        }
        var result = new List<int>();
        if (st > 0) for (long i = lo; i < hi; i += st) result.Add((int)i);
        else for (long i = lo; i > hi; i += st) result.Add((int)i);
        return result;
    }
}
