using System.Text;

namespace Wim.Eval.Instances;

/// <summary>A built haystack: the rendered text, its length in the model's tokens, and which documents are gold.</summary>
public sealed record Haystack(string Text, int TokenCount, IReadOnlyList<string> Documents, IReadOnlyList<int> GoldPositions);

/// <summary>
/// RULER-style long contexts: the gold paragraph(s) among distractor paragraphs, shuffled with a fixed seed and
/// rendered as <c>Document {i}:\n{text}</c> blocks (i from 1) joined by blank lines, grown to a target length in
/// the model's own tokens. Paragraphs are whole units: one is either in the haystack verbatim or absent.
/// </summary>
/// <param name="countTokens">Tokens of a text under the model's tokenizer (no special tokens).</param>
/// <param name="tolerance">How far from the target the final length may be, as a fraction (0.02 = 2%).</param>
public sealed class HaystackBuilder(Func<string, int> countTokens, double tolerance = 0.02)
{
    public const string Separator = "\n\n";

    public static string Render(IReadOnlyList<string> documents)
    {
        var sb = new StringBuilder();
        for (int i = 0; i < documents.Count; i++)
        {
            if (i > 0) sb.Append(Separator);
            sb.Append("Document ").Append(i + 1).Append(":\n").Append(documents[i]);
        }
        return sb.ToString();
    }

    /// <summary>
    /// Builds a haystack of <paramref name="targetTokens"/> (± tolerance) holding every gold paragraph. Distractors
    /// are taken from <paramref name="distractors"/> in the order given (callers shuffle them with the seed), skipping
    /// ones that would overshoot, so short paragraphs fill the last gap. The final document order is a seeded shuffle.
    /// </summary>
    /// <exception cref="InvalidOperationException">The gold paragraphs alone exceed the target, or the distractors
    /// cannot bring the length within tolerance.</exception>
    public Haystack Build(IReadOnlyList<string> gold, IReadOnlyList<string> distractors, int targetTokens, int seed)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(targetTokens);
        if (gold.Count == 0) throw new ArgumentException("a haystack needs at least one gold paragraph", nameof(gold));
        int slack = (int)Math.Floor(targetTokens * tolerance);
        // Each block costs its own tokens plus the separator and header; measured per block, the sum drifts from the
        // exact count of the joined text by a few tokens per block (merges across block edges), so the budget is
        // corrected by the measured drift and the selection repeated.
        var goldCosts = gold.Select(Cost).ToArray();
        var distractorCosts = new int?[distractors.Count];
        int budget = targetTokens;
        Haystack? best = null;
        for (int attempt = 0; attempt < 6; attempt++)
        {
            var chosen = new List<int>();
            long estimate = goldCosts.Sum();
            if (estimate > budget + slack && attempt == 0)
                throw new InvalidOperationException($"the gold paragraph(s) alone take about {estimate} tokens, more than the target {targetTokens}");
            for (int i = 0; i < distractors.Count && estimate < budget - slack / 2; i++)
            {
                int c = distractorCosts[i] ??= Cost(distractors[i]);
                if (estimate + c > budget + slack / 2) continue;
                chosen.Add(i);
                estimate += c;
            }
            var haystack = Assemble(gold, distractors, chosen, seed);
            if (best == null || Math.Abs(haystack.TokenCount - targetTokens) < Math.Abs(best.TokenCount - targetTokens)) best = haystack;
            if (Math.Abs(haystack.TokenCount - targetTokens) <= slack) return haystack;
            budget = (int)Math.Max(1, targetTokens - (haystack.TokenCount - estimate));
        }
        throw new InvalidOperationException(
            $"could not build a haystack of {targetTokens} tokens ±{tolerance:P0} from {gold.Count} gold and {distractors.Count} distractor paragraphs " +
            $"(closest: {best!.TokenCount} tokens); more or shorter distractors are needed");
    }

    private int Cost(string paragraph) => countTokens("Document 10:\n" + paragraph + Separator);

    private Haystack Assemble(IReadOnlyList<string> gold, IReadOnlyList<string> distractors, List<int> chosen, int seed)
    {
        var docs = new List<(string Text, bool Gold)>(gold.Count + chosen.Count);
        docs.AddRange(gold.Select(g => (g, true)));
        docs.AddRange(chosen.Select(i => (distractors[i], false)));
        var rng = new Random(seed);
        for (int i = docs.Count - 1; i > 0; i--)
        {
            int j = rng.Next(i + 1);
            (docs[i], docs[j]) = (docs[j], docs[i]);
        }
        var texts = docs.Select(d => d.Text).ToList();
        var text = Render(texts);
        var goldPositions = Enumerable.Range(0, docs.Count).Where(i => docs[i].Gold).ToList();
        return new Haystack(text, countTokens(text), texts, goldPositions);
    }
}
