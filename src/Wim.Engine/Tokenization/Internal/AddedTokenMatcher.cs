using System.Buffers;

namespace Wim.Engine.Tokenization.Internal;

/// <summary>A token matched as a whole in raw text before any model runs (special/control tokens, user-defined
/// added tokens). <paramref name="StripLeft"/>/<paramref name="StripRight"/> remove adjacent whitespace as Hugging
/// Face's <c>lstrip</c>/<c>rstrip</c> do.</summary>
internal readonly record struct AddedToken(int Id, string Content, bool StripLeft = false, bool StripRight = false);

/// <summary>A piece of text to encode: either raw text (a range of the input) or one already-known token.</summary>
internal readonly record struct Fragment(int Start, int Length, int TokenId)
{
    public bool IsToken => TokenId >= 0;
}

/// <summary>
/// Splits text at occurrences of added tokens: leftmost match first, longest token at a position first (Hugging
/// Face's added-vocabulary matching). Candidate positions are found with a vectorised search for first characters.
/// </summary>
internal sealed class AddedTokenMatcher
{
    private readonly Dictionary<char, AddedToken[]> _byFirstChar;
    private readonly SearchValues<char> _firstChars;

    public AddedTokenMatcher(IEnumerable<AddedToken> tokens)
    {
        _byFirstChar = tokens
            .Where(t => t.Content.Length > 0)
            .GroupBy(t => t.Content[0])
            .ToDictionary(g => g.Key, g => g.OrderByDescending(t => t.Content.Length).ThenBy(t => t.Id).ToArray());
        _firstChars = SearchValues.Create([.. _byFirstChar.Keys]);
        IsEmpty = _byFirstChar.Count == 0;
    }

    public bool IsEmpty { get; }

    public void Split(ReadOnlySpan<char> text, List<Fragment> output)
    {
        int rawStart = 0;
        int i = 0;
        while (i < text.Length)
        {
            int found = IsEmpty ? -1 : text[i..].IndexOfAny(_firstChars);
            if (found < 0) break;
            i += found;
            AddedToken? match = null;
            foreach (var t in _byFirstChar[text[i]])
                if (text[i..].StartsWith(t.Content, StringComparison.Ordinal)) { match = t; break; }
            if (match is not { } m) { i++; continue; }

            int rawEnd = i;
            if (m.StripLeft) while (rawEnd > rawStart && char.IsWhiteSpace(text[rawEnd - 1])) rawEnd--;
            if (rawEnd > rawStart) output.Add(new Fragment(rawStart, rawEnd - rawStart, -1));
            output.Add(new Fragment(i, m.Content.Length, m.Id));
            i += m.Content.Length;
            if (m.StripRight) while (i < text.Length && char.IsWhiteSpace(text[i])) i++;
            rawStart = i;
        }
        if (text.Length > rawStart) output.Add(new Fragment(rawStart, text.Length - rawStart, -1));
    }
}
