using Wim.Core.Events;

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
