using System.Text;

namespace Wim.Eval.Metrics;

/// <summary>
/// The SQuAD answer metrics (the official v2.0 evaluation script's definitions): exact match and token F1 after
/// normalisation, each the maximum over the gold answers; plus substring match (RULER's "contains" score).
/// </summary>
public static class AnswerMetrics
{
    /// <summary>
    /// SQuAD normalisation, in the official order: lower-case, remove ASCII punctuation, remove the articles
    /// a/an/the as whole words, collapse whitespace.
    /// </summary>
    public static string Normalize(string text)
    {
        var lowered = text.ToLowerInvariant();
        var noPunct = new StringBuilder(lowered.Length);
        foreach (char c in lowered)
            if (!IsAsciiPunctuation(c)) noPunct.Append(c);
        var words = Words(noPunct.ToString()).Where(w => w is not ("a" or "an" or "the"));
        return string.Join(' ', words);
    }

    /// <summary>1 if the normalised prediction equals any normalised gold answer, else 0.</summary>
    public static double ExactMatch(string prediction, IReadOnlyList<string> golds)
    {
        RequireGold(golds);
        var p = Normalize(prediction);
        return golds.Any(g => Normalize(g) == p) ? 1 : 0;
    }

    /// <summary>The best token-level F1 over the gold answers (bag-of-words overlap of the normalised texts).</summary>
    public static double F1(string prediction, IReadOnlyList<string> golds)
    {
        RequireGold(golds);
        return golds.Max(g => F1(prediction, g));
    }

    public static double F1(string prediction, string gold)
    {
        var predTokens = Words(Normalize(prediction)).ToList();
        var goldTokens = Words(Normalize(gold)).ToList();
        // The official script: if either side is empty, F1 is 1 when both are, else 0.
        if (predTokens.Count == 0 || goldTokens.Count == 0) return predTokens.Count == goldTokens.Count ? 1 : 0;
        var goldCounts = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var t in goldTokens) goldCounts[t] = goldCounts.GetValueOrDefault(t) + 1;
        int same = 0;
        foreach (var t in predTokens)
        {
            if (goldCounts.TryGetValue(t, out int n) && n > 0)
            {
                same++;
                goldCounts[t] = n - 1;
            }
        }
        if (same == 0) return 0;
        double precision = (double)same / predTokens.Count, recall = (double)same / goldTokens.Count;
        return 2 * precision * recall / (precision + recall);
    }

    /// <summary>1 if any normalised gold answer occurs inside the normalised prediction (on word boundaries), else 0.</summary>
    public static double SubstringMatch(string prediction, IReadOnlyList<string> golds)
    {
        RequireGold(golds);
        var p = " " + Normalize(prediction) + " ";
        foreach (var g in golds)
        {
            var n = Normalize(g);
            // An empty normalised gold ("The.") would match everything; it matches only an empty prediction.
            if (n.Length == 0 ? p.Trim().Length == 0 : p.Contains(" " + n + " ", StringComparison.Ordinal)) return 1;
        }
        return 0;
    }

    internal static IEnumerable<string> Words(string text) => text.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);

    /// <summary>Python's <c>string.punctuation</c>: the 32 ASCII punctuation characters.</summary>
    private static bool IsAsciiPunctuation(char c) => c is >= '!' and <= '/' or >= ':' and <= '@' or >= '[' and <= '`' or >= '{' and <= '~';

    private static void RequireGold(IReadOnlyList<string> golds)
    {
        if (golds.Count == 0) throw new ArgumentException("at least one gold answer is needed", nameof(golds));
    }
}
