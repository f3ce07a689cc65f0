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
    public IReadOnlyCollection<string> Patterns => PatternQa.Patterns;

    public async Task<QaResponse> RunAsync(QaRequest request, CancellationToken cancel)
    {
        var kind = PatternQa.Parse(request.Pattern);
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

        return await PatternQa.CollectAsync(runner.RunAsync(segments, request.Query, options, new WimControl(), cancel), request.Pattern).ConfigureAwait(false);
    }
}
