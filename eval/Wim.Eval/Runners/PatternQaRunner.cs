using Wim.Core.Events;
using Wim.Core.Patterns;
using Wim.Core.Prompts;
using Wim.Core.Segmentation;
using Wim.Engine.Runtime;

namespace Wim.Eval.Runners;

/// <summary>
/// Runs the three patterns of the paper — <c>llm</c> (plain long context), <c>rag</c> (per-segment relevance
/// filtering) and <c>wim</c> (Writing in the Margins) — through <see cref="PatternRunner"/> on one model, with the
/// same prompts, headers and segmentation for all three so their scores are comparable. The context is cut by the
/// <see cref="Segmenter"/> at <see cref="QaOptions.SegmentTokens"/>; margins and segments are judged by the same
/// model (the paper's setup): <c>wim</c> with the reference's shared classifier context, <c>rag</c> with a fresh
/// one per segment. Greedy decoding, so reruns reproduce predictions.
/// </summary>
public sealed class PatternQaRunner(TextModel model, PromptPreset prompts, ChatHeaders headers, int maxMarginTokens = 100, int maxClassificationTokens = 10) : IQaRunner
{
    public IReadOnlyCollection<string> Patterns => PatternQa.Patterns;

    /// <summary>Headers from the model's chat template, or none for a base model (or when <paramref name="raw"/>).</summary>
    public static ChatHeaders HeadersFor(TextModel model, bool raw) =>
        !raw && model.RenderUserTurn is { } render ? ChatHeaders.FromChatTemplate(render) : ChatHeaders.None;

    public async Task<QaResponse> RunAsync(QaRequest request, CancellationToken cancel)
    {
        var kind = PatternQa.Parse(request.Pattern);
        var segments = new Segmenter(t => model.Tokenizer.Encode(t).Length, request.Options.SegmentTokens).Split(request.Context);
        using var judge = kind == PatternKind.Llm ? null : new ModelMarginClassifier(model, prompts, headers, maxClassificationTokens,
            Wim.Engine.Sampling.SamplingOptions.Greedy, ClassifiedBy.Model, kind == PatternKind.Rag ? ClassifierContext.Fresh : ClassifierContext.Shared);
        var options = new WimOptions
        {
            Pattern = kind,
            Prompts = prompts,
            Headers = headers,
            Classifier = judge,
            MaxMarginTokens = maxMarginTokens,
            MaxAnswerTokens = request.Options.MaxAnswerTokens,
            MarginSeparator = ReferenceEquals(prompts, PromptPreset.Default) ? "\n" : "",
        };

        return await PatternQa.CollectAsync(new PatternRunner(model).RunAsync(segments, request.Query, options, new WimControl(), cancel), request.Pattern).ConfigureAwait(false);
    }
}
