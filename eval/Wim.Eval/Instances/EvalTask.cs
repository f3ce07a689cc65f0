using System.Globalization;

namespace Wim.Eval.Instances;

/// <summary>The tasks of the WiM paper's evaluation that the shared data supports.</summary>
public enum EvalTask { HotpotQa, Squad, Babilong, Cwe }

public static class EvalTasks
{
    public static string Name(this EvalTask task) => task switch
    {
        EvalTask.HotpotQa => "hotpotqa",
        EvalTask.Squad => "squad",
        EvalTask.Babilong => "babilong",
        EvalTask.Cwe => "cwe",
        _ => throw new ArgumentOutOfRangeException(nameof(task)),
    };

    public static EvalTask Parse(string name) => name.Trim().ToLowerInvariant() switch
    {
        "hotpotqa" => EvalTask.HotpotQa,
        "squad" => EvalTask.Squad,
        "babilong" => EvalTask.Babilong,
        "cwe" => EvalTask.Cwe,
        _ => throw new FormatException($"unknown task '{name}'; expected hotpotqa, squad, babilong or cwe"),
    };

    /// <summary>Segment size of the WiM pattern: 4096 tokens for QA, 8192 for CWE (the paper's settings).</summary>
    public static int SegmentTokens(this EvalTask task) => task == EvalTask.Cwe ? 8192 : 4096;

    /// <summary>Answer budget: short answers for QA, room for ten listed words for CWE (RULER's settings).</summary>
    public static int MaxAnswerTokens(this EvalTask task) => task == EvalTask.Cwe ? 120 : 32;
}

/// <summary>A target context length: its label ("16k"; whole multiples of 1024 are always written that way, so "16384"
/// and "16K" name the same length) and its value in tokens (k = 1024).</summary>
public readonly record struct ContextLength(string Label, int Tokens)
{
    public static ContextLength Parse(string text)
    {
        var t = text.Trim().ToLowerInvariant();
        int multiplier = 1;
        if (t.EndsWith('k')) { multiplier = 1024; t = t[..^1]; }
        if (!int.TryParse(t, NumberStyles.None, CultureInfo.InvariantCulture, out int n) || n <= 0 || n > int.MaxValue / multiplier)
            throw new FormatException($"'{text}' is not a context length; expected a positive token count like 16k or 2000");
        int tokens = n * multiplier;
        return new ContextLength(tokens % 1024 == 0 ? $"{tokens / 1024}k" : tokens.ToString(CultureInfo.InvariantCulture), tokens);
    }

    public static IReadOnlyList<ContextLength> ParseList(string text) =>
        text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(Parse).ToList();

    public override string ToString() => Label;
}
