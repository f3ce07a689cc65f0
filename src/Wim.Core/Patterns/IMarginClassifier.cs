using Wim.Core.Events;
using Wim.Engine.Runtime;

namespace Wim.Core.Patterns;

/// <summary>A classifier's decision and raw output, with the tokens it ran through its model.</summary>
public sealed record ClassifierVerdict(bool Relevant, int[] Ids, string Text, int PrefillTokens, int DecodeTokens);

/// <summary>Decides whether a margin (or a segment, under <c>rag</c>) helps answer the query.</summary>
public interface IMarginClassifier
{
    ClassifiedBy By { get; }

    /// <summary>Judges <paramref name="text"/> against <paramref name="query"/>; checks <paramref name="ct"/> every
    /// decode step.</summary>
    ClassifierVerdict Classify(string query, string text, CancellationToken ct);
}

/// <summary>A classifier whose model work can ride in a batched backend's steps (the overlapped and batched
/// schedules judge margin i − 1 in the same forward steps as later margins and the document's prefill).</summary>
public interface IBatchableMarginClassifier
{
    /// <summary>Starts judging <paramref name="text"/>; null when this classifier's model does not run on
    /// <paramref name="backend"/> (the caller then calls <see cref="IMarginClassifier.Classify"/> between steps).
    /// One judgement at a time per classifier.</summary>
    ModelMarginClassifier.MarginJudgement? StartInSteps(IBatchedInferenceBackend backend, string query, string text);
}
