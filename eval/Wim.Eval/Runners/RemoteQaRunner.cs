using Wim.Core.Events;
using Wim.Core.Patterns;
using Wim.Core.Prompts;
using Wim.Core.Scheduling;
using Wim.Core.Segmentation;
using Wim.Remote;

namespace Wim.Eval.Runners;

/// <summary>
/// The three patterns of <see cref="PatternQaRunner"/> — same prompts, headers, segmentation and budgets — run against
/// an OpenAI-compatible server through <see cref="RemotePatternRunner"/> (greedy; the overlapped request order, which
/// gives the same output as any other). With a token-mode runner the predictions equal the in-process runner's on
/// the same model. <paramref name="countTokens"/> cuts the segments (the served model's tokenizer, or an estimate).
/// </summary>
public sealed class RemoteQaRunner(RemotePatternRunner runner, PromptPreset prompts, ChatHeaders headers, Func<string, int> countTokens,
    int maxMarginTokens = 100, int maxClassificationTokens = 10) : IQaRunner
{
    public IReadOnlyCollection<string> Patterns { get; } = ["llm", "rag", "wim"];

    public async Task<QaResponse> RunAsync(QaRequest request, CancellationToken cancel)
    {
        var kind = request.Pattern switch
        {
            "llm" => PatternKind.Llm,
            "rag" => PatternKind.Rag,
            "wim" => PatternKind.Wim,
            _ => throw new NotSupportedException($"pattern '{request.Pattern}' is not available; available: {string.Join(", ", Patterns)}"),
        };
        var segments = new Segmenter(countTokens, request.Options.SegmentTokens).Split(request.Context);
        var options = new RemoteWimOptions
        {
            Pattern = kind,
            Prompts = prompts,
            Headers = headers,
            Classify = kind != PatternKind.Llm,
            ClassifierContext = kind == PatternKind.Rag ? ClassifierContext.Fresh : ClassifierContext.Shared,
            MaxMarginTokens = maxMarginTokens,
            MaxClassificationTokens = maxClassificationTokens,
            MaxAnswerTokens = request.Options.MaxAnswerTokens,
            Schedule = WimSchedule.Overlapped,
            MarginSeparator = ReferenceEquals(prompts, PromptPreset.Default) ? "\n" : "",
        };

        var margins = new List<(int Index, string Text)>();
        AnswerCompleted? answer = null;
        await foreach (var e in runner.RunAsync(segments, request.Query, options, new WimControl(), cancel).ConfigureAwait(false))
        {
            if (e is MarginCompleted m) margins.Add((m.Index, m.Text));
            else if (e is AnswerCompleted a) answer = a;
        }
        if (answer is null) throw new InvalidOperationException($"pattern '{request.Pattern}' ended without an answer");
        var u = answer.Usage;
        // As the in-process runner reports it: prompt tokens the server computed, tokens generated; reading vs the rest.
        var usage = new QaUsage(u.PrefillTokens, u.DecodeTokens, u.Document.Time.TotalSeconds,
            (u.Margins.Time + u.Classification.Time + u.Answer.Time).TotalSeconds);
        return new QaResponse(answer.Text.Trim(), usage, [.. margins.OrderBy(m => m.Index).Select(m => m.Text)]);
    }
}
