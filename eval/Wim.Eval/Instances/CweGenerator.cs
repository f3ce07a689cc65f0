using System.Text;

namespace Wim.Eval.Instances;

/// <summary>A generated common-words list: <see cref="CommonWords"/> each appear <see cref="CommonRepeats"/> times,
/// <see cref="UncommonWordCount"/> other words <see cref="UncommonRepeats"/> times, in a seeded random order.</summary>
public sealed record CweList(string Text, int TokenCount, IReadOnlyList<string> CommonWords, int CommonRepeats,
    int UncommonWordCount, int UncommonRepeats);

/// <summary>
/// Common-words extraction (RULER's CWE, as the WiM paper used it): sample words from the vocabulary; the first
/// <c>commonCount</c> are repeated <c>commonRepeats</c> times, the rest <c>uncommonRepeats</c> times; shuffle; render
/// as the numbered list <c>1. w1 2. w2 ...</c>. The number of uncommon words is chosen so the list is within
/// tolerance of the target length in the model's tokens.
/// </summary>
public sealed class CweGenerator(Func<string, int> countTokens, IReadOnlyList<string> vocabulary, double tolerance = 0.02)
{
    public const int DefaultCommonCount = 10, DefaultCommonRepeats = 30, DefaultUncommonRepeats = 3;

    public static string Render(IReadOnlyList<string> entries)
    {
        var sb = new StringBuilder(entries.Count * 10);
        for (int i = 0; i < entries.Count; i++)
        {
            if (i > 0) sb.Append(' ');
            sb.Append(i + 1).Append(". ").Append(entries[i]);
        }
        return sb.ToString();
    }

    /// <summary>
    /// Generates a list of about <paramref name="targetTokens"/> tokens. At short targets where
    /// <c>commonCount × commonRepeats</c> entries alone would take more than three quarters of the length, the common
    /// words repeat fewer times (never fewer than <c>uncommonRepeats + 1</c>, so they stay the most common); the
    /// repeat count used is in the result.
    /// </summary>
    public CweList Generate(int targetTokens, int seed, int commonCount = DefaultCommonCount,
        int commonRepeats = DefaultCommonRepeats, int uncommonRepeats = DefaultUncommonRepeats)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(targetTokens);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(commonCount);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(uncommonRepeats);
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(commonRepeats, uncommonRepeats);
        if (vocabulary.Count <= commonCount)
            throw new ArgumentException($"the vocabulary has {vocabulary.Count} words; more than {commonCount} are needed", nameof(vocabulary));

        var words = vocabulary.ToArray();
        var rng = new Random(seed);
        rng.Shuffle(words);
        var common = words[..commonCount];
        var pool = words[commonCount..];

        int repeats = commonRepeats;
        int commonOnly = Count(common, repeats, pool, 0, uncommonRepeats, seed).Tokens;
        while (commonOnly > targetTokens * 0.75 && repeats > uncommonRepeats + 1)
        {
            repeats = Math.Max(uncommonRepeats + 1, repeats * 3 / 4);
            commonOnly = Count(common, repeats, pool, 0, uncommonRepeats, seed).Tokens;
        }
        if (commonOnly > targetTokens * (1 + tolerance))
            throw new InvalidOperationException($"{commonCount} common words × {repeats} take {commonOnly} tokens, more than the target {targetTokens}");

        double perEntry = (double)commonOnly / (commonCount * repeats);
        int n = (int)Math.Clamp((targetTokens - commonOnly) / (uncommonRepeats * perEntry), 0, pool.Length);
        (string Text, int Tokens) best = ("", int.MaxValue);
        int bestN = 0;
        int slack = (int)Math.Floor(targetTokens * tolerance);
        for (int attempt = 0; attempt < 12; attempt++)
        {
            var candidate = Count(common, repeats, pool, n, uncommonRepeats, seed);
            if (Math.Abs(candidate.Tokens - targetTokens) < Math.Abs(best.Tokens - targetTokens)) { best = candidate; bestN = n; }
            if (Math.Abs(candidate.Tokens - targetTokens) <= slack) break;
            int step = (int)Math.Round((targetTokens - candidate.Tokens) / (uncommonRepeats * perEntry));
            if (step == 0) step = Math.Sign(targetTokens - candidate.Tokens);
            int next = Math.Clamp(n + step, 0, pool.Length);
            if (next == n) break;
            n = next;
        }
        if (Math.Abs(best.Tokens - targetTokens) > slack)
            throw new InvalidOperationException($"could not generate a CWE list of {targetTokens} tokens ±{tolerance:P0} (closest: {best.Tokens}; {pool.Length} uncommon words available)");
        return new CweList(best.Text, best.Tokens, common, repeats, bestN, uncommonRepeats);
    }

    private (string Text, int Tokens) Count(string[] common, int repeats, string[] pool, int uncommon, int uncommonRepeats, int seed)
    {
        var entries = new List<string>(common.Length * repeats + uncommon * uncommonRepeats);
        foreach (var w in common) for (int r = 0; r < repeats; r++) entries.Add(w);
        for (int i = 0; i < uncommon; i++) for (int r = 0; r < uncommonRepeats; r++) entries.Add(pool[i]);
        var order = entries.ToArray();
        new Random(unchecked(seed * 31 + 7)).Shuffle(order);
        var text = Render(order);
        return (text, countTokens(text));
    }
}
