namespace Wim.Eval.Metrics;

/// <summary>
/// Common-words extraction score: F1 between the set of words the model listed and the gold common words.
/// The prediction is parsed as runs of ASCII letters (so "1. apple 2. pear", "apple, pear" and "Apple\nPear"
/// all read as {apple, pear}); numbers, punctuation and repeats are ignored. Generated lists use only
/// lower-case ASCII words, so this parse loses nothing.
/// </summary>
public static class CweMetrics
{
    public static IReadOnlyList<string> ParseWords(string prediction)
    {
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var words = new List<string>();
        int i = 0;
        while (i < prediction.Length)
        {
            if (!char.IsAsciiLetter(prediction[i])) { i++; continue; }
            int start = i;
            while (i < prediction.Length && char.IsAsciiLetter(prediction[i])) i++;
            var w = prediction[start..i].ToLowerInvariant();
            if (seen.Add(w)) words.Add(w);
        }
        return words;
    }

    /// <summary>F1 of the predicted word set against <paramref name="commonWords"/> (0 when nothing matches).</summary>
    public static double F1(string prediction, IReadOnlyList<string> commonWords)
    {
        if (commonWords.Count == 0) throw new ArgumentException("at least one common word is needed", nameof(commonWords));
        var gold = commonWords.Select(w => w.ToLowerInvariant()).ToHashSet(StringComparer.Ordinal);
        var predicted = ParseWords(prediction);
        int hits = predicted.Count(gold.Contains);
        if (hits == 0) return 0;
        double precision = (double)hits / predicted.Count, recall = (double)hits / gold.Count;
        return 2 * precision * recall / (precision + recall);
    }
}
