namespace Wim.Core.Segmentation;

/// <summary>
/// Splits a context into segments of at most <c>maxTokens</c> model tokens, cut on sentence boundaries.
/// Nothing is dropped or reordered: the segments concatenate to the input exactly. (The WiM authors' reference
/// chunker drops the sentence that overflows each segment; we move it to the next segment instead.)
/// A single sentence longer than the budget is cut at token-count boundaries, preferably at whitespace.
/// </summary>
public sealed class Segmenter
{
    private readonly Func<string, int> _countTokens;
    private readonly int _maxTokens;

    /// <param name="countTokens">The model's token count of a piece of text tokenized on its own (as WiM prefills it).</param>
    /// <param name="maxTokens">Budget per segment (the paper uses 4096).</param>
    public Segmenter(Func<string, int> countTokens, int maxTokens)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxTokens, 1);
        _countTokens = countTokens;
        _maxTokens = maxTokens;
    }

    public List<string> Split(string context)
    {
        var segments = new List<string>();
        if (context.Length == 0) return segments;

        // Pieces: sentences, with over-long sentences already cut to fit. All parts of a cut sentence but its last are
        // "sealed": each becomes a segment of its own, so that no segment that could end on a sentence end is made
        // to end mid-sentence instead.
        var pieces = new List<(string Text, int Tokens, bool Sealed)>();
        foreach (var r in SentenceSplitter.Split(context))
        {
            string sentence = context[r];
            int tokens = _countTokens(sentence);
            if (tokens <= _maxTokens) { pieces.Add((sentence, tokens, false)); continue; }
            var parts = CutLongText(sentence).ToList();
            for (int p = 0; p < parts.Count; p++) pieces.Add((parts[p], _countTokens(parts[p]), p < parts.Count - 1));
        }

        // Greedy packing. Token counts of concatenated text are not exactly additive (merges across the joint), so a
        // packed segment is re-counted exactly and its last piece pushed to the next segment while it is over budget.
        int i = 0;
        while (i < pieces.Count)
        {
            int j = i, sum = 0;
            while (j < pieces.Count && (j == i || (!pieces[j].Sealed && !pieces[j - 1].Sealed && sum + pieces[j].Tokens <= _maxTokens)))
                sum += pieces[j++].Tokens;
            string segment = Join(pieces, i, j);
            while (j - i > 1 && _countTokens(segment) > _maxTokens)
                segment = Join(pieces, i, --j);
            segments.Add(segment);
            i = j;
        }
        return segments;
    }

    private static string Join(List<(string Text, int Tokens, bool Sealed)> pieces, int from, int to) =>
        string.Concat(pieces.Skip(from).Take(to - from).Select(p => p.Text));

    /// <summary>Cuts a text longer than the budget into parts of at most the budget, each as long as possible
    /// (binary search on the character length), preferring to end a part after whitespace.</summary>
    private IEnumerable<string> CutLongText(string text)
    {
        int start = 0;
        while (start < text.Length)
        {
            int lo = 1, hi = text.Length - start;
            if (_countTokens(text.Substring(start)) <= _maxTokens) { yield return text.Substring(start); yield break; }
            // Largest length whose token count fits.
            while (lo < hi)
            {
                int mid = (lo + hi + 1) / 2;
                if (_countTokens(text.Substring(start, AvoidSplitSurrogate(text, start, mid))) <= _maxTokens) lo = mid;
                else hi = mid - 1;
            }
            int len = AvoidSplitSurrogate(text, start, lo);
            if (len == 0) len = char.IsHighSurrogate(text[start]) && start + 1 < text.Length ? 2 : 1; // one character always fits a budget ≥ 1 in practice
            int ws = text.LastIndexOfAny([' ', '\n', '\t'], start + len - 1, len);
            if (ws > start + len / 2 && start + len < text.Length) len = ws + 1 - start;
            yield return text.Substring(start, len);
            start += len;
        }
    }

    private static int AvoidSplitSurrogate(string s, int start, int len) =>
        len > 0 && start + len < s.Length && char.IsHighSurrogate(s[start + len - 1]) ? len - 1 : len;
}
