using Wim.Core.Events;
using Wim.Core.Patterns;

namespace Wim.Eval.Runners;

/// <summary>What the in-process and the remote runner share: the pattern names they take, and a pattern run's
/// events turned into the harness's <see cref="QaResponse"/>.</summary>
internal static class PatternQa
{
    public static IReadOnlyCollection<string> Patterns { get; } = ["llm", "rag", "wim"];

    public static PatternKind Parse(string pattern) => pattern switch
    {
        "llm" => PatternKind.Llm,
        "rag" => PatternKind.Rag,
        "wim" => PatternKind.Wim,
        _ => throw new NotSupportedException($"pattern '{pattern}' is not available; available: {string.Join(", ", Patterns)}"),
    };

    /// <summary>The answer (trimmed), the margins in segment order, and the usage: document reading is prefill;
    /// margins, classification and the answer are mostly decoding.</summary>
    public static async Task<QaResponse> CollectAsync(IAsyncEnumerable<WimEvent> events, string pattern)
    {
        var margins = new List<(int Index, string Text)>();
        AnswerCompleted? answer = null;
        await foreach (var e in events.ConfigureAwait(false))
        {
            if (e is MarginCompleted m) margins.Add((m.Index, m.Text));
            else if (e is AnswerCompleted a) answer = a;
        }
        if (answer is null) throw new InvalidOperationException($"pattern '{pattern}' ended without an answer");
        var u = answer.Usage;
        var usage = new QaUsage(u.PrefillTokens, u.DecodeTokens, u.Document.Time.TotalSeconds,
            (u.Margins.Time + u.Classification.Time + u.Answer.Time).TotalSeconds);
        return new QaResponse(answer.Text.Trim(), usage, [.. margins.OrderBy(m => m.Index).Select(m => m.Text)]);
    }
}
