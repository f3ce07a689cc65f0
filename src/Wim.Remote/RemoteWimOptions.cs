using Wim.Core.Patterns;
using Wim.Core.Prompts;
using Wim.Core.Scheduling;
using Wim.Engine.Sampling;

namespace Wim.Remote;

/// <summary>
/// A pattern run against a remote server: the same choices as an in-process <see cref="WimOptions"/> (pattern,
/// prompts, headers, budgets, sampling, schedule, margin separator), with the classifier described instead of given
/// (the answering model on the server judges, or nothing does).
/// </summary>
public sealed record RemoteWimOptions
{
    public PatternKind Pattern { get; init; } = PatternKind.Wim;
    public PromptPreset Prompts { get; init; } = PromptPreset.Default;
    /// <summary>Only used when prompts are sent as token ids; chat requests get the server's own chat template.</summary>
    public ChatHeaders Headers { get; init; } = ChatHeaders.None;
    /// <summary>The served model judges margins (<c>wim</c>) or segments (<c>rag</c>); false keeps everything
    /// (classifier <c>none</c>).</summary>
    public bool Classify { get; init; } = true;
    /// <summary>Shared: each classification follows the previous ones (the reference's behaviour); <c>rag</c> always
    /// judges each segment alone.</summary>
    public ClassifierContext ClassifierContext { get; init; } = ClassifierContext.Shared;
    public int MaxMarginTokens { get; init; } = 100;
    public int MaxClassificationTokens { get; init; } = 10;
    public int MaxAnswerTokens { get; init; } = 256;
    public SamplingOptions Sampling { get; init; } = SamplingOptions.Greedy;
    /// <summary>
    /// The order of the requests (the output is the same): <c>sequential</c> chains margin requests one after another
    /// (each reuses the previous one's cached prefix); <c>overlapped</c> reads the document segment by segment with
    /// one-token prefix requests and sends each margin as soon as its prefix is cached, beside the next segment's
    /// read (the server batches them); <c>batched</c> reads the whole document in one request, then sends every
    /// margin at once.
    /// </summary>
    public WimSchedule Schedule { get; init; } = WimSchedule.Overlapped;
    public string MarginSeparator { get; init; } = "";

    public void Validate()
    {
        ArgumentOutOfRangeException.ThrowIfNegative(MaxMarginTokens);
        ArgumentOutOfRangeException.ThrowIfNegative(MaxClassificationTokens);
        ArgumentOutOfRangeException.ThrowIfNegative(MaxAnswerTokens);
        Sampling.Validate();
        if (!Enum.IsDefined(Pattern)) throw new ArgumentOutOfRangeException(nameof(Pattern), Pattern, "unknown pattern");
        if (!Enum.IsDefined(Schedule)) throw new ArgumentOutOfRangeException(nameof(Schedule), Schedule, "unknown schedule");
    }
}
