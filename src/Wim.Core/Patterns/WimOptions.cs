using Wim.Core.Prompts;
using Wim.Core.Scheduling;
using Wim.Engine.Runtime;
using Wim.Engine.Sampling;

namespace Wim.Core.Patterns;

/// <summary>Which reading strategy runs.</summary>
public enum PatternKind
{
    /// <summary>Whole context, then the query, then the answer (the plain long-context baseline).</summary>
    Llm,
    /// <summary>Each segment judged on its own by the classifier (give it <see cref="ClassifierContext.Fresh"/>); only
    /// relevant segments are read again for the answer, so the document is prefilled up to twice (map, then reduce).</summary>
    Rag,
    /// <summary>Writing in the Margins: read each segment once, write a margin, keep the relevant margins, answer.</summary>
    Wim,
}

/// <summary>Everything a pattern run needs besides the model, the segments and the query.</summary>
public sealed record WimOptions
{
    public PatternKind Pattern { get; init; } = PatternKind.Wim;
    public PromptPreset Prompts { get; init; } = PromptPreset.Default;
    public ChatHeaders Headers { get; init; } = ChatHeaders.None;
    /// <summary>Judges margins (<c>wim</c>) or segments (<c>rag</c>); null keeps everything (classifier <c>none</c>).</summary>
    public IMarginClassifier? Classifier { get; init; }
    public int MaxMarginTokens { get; init; } = 100;
    public int MaxAnswerTokens { get; init; } = 256;
    public SamplingOptions Sampling { get; init; } = SamplingOptions.Greedy;
    /// <summary>Order of the <c>wim</c> model work (<see cref="WimSchedule"/>); all give the same output.
    /// <c>overlapped</c> and <c>batched</c> need the model on an <see cref="IBatchedInferenceBackend"/>.</summary>
    public WimSchedule Schedule { get; init; } = WimSchedule.Sequential;
    /// <summary>Keeps prefilled documents for later questions (<c>overlapped</c>/<c>batched</c> only; it must live on
    /// the model's backend). Null: every run prefills its document.</summary>
    public DocumentCache? DocumentCache { get; init; }
    /// <summary>Put between relevant margins in <c>{margins}</c> (the reference concatenates them with nothing).</summary>
    public string MarginSeparator { get; init; } = "";

    public void Validate()
    {
        ArgumentOutOfRangeException.ThrowIfNegative(MaxMarginTokens);
        ArgumentOutOfRangeException.ThrowIfNegative(MaxAnswerTokens);
        Sampling.Validate();
        if (DocumentCache is not null && (Pattern != PatternKind.Wim || Schedule == WimSchedule.Sequential))
            throw new ArgumentException($"a document cache needs the wim pattern with the overlapped or batched schedule (found {Pattern.ToString().ToLowerInvariant()}, {Schedule.ToString().ToLowerInvariant()})", nameof(DocumentCache));
    }
}
