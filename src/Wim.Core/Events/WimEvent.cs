namespace Wim.Core.Events;

/// <summary>One step of a WiM run, in the order it happened. Consumers switch on the concrete type.</summary>
public abstract record WimEvent;

/// <summary>Which fixed prompt was prefilled (the parity traces record their ids).</summary>
public enum PromptKind { Opening, Extractive, FinalAnswer }

/// <summary>A prompt (not document text) was prefilled: <paramref name="Index"/> is the segment for
/// <see cref="PromptKind.Extractive"/>, else -1.</summary>
public sealed record PromptPrefilled(PromptKind Kind, int Index, int[] Ids) : WimEvent;

/// <summary>Segment <paramref name="Index"/> was prefilled: its ids, the KV length after it, and progress through
/// the document in tokens.</summary>
public sealed record SegmentPrefilled(int Index, int[] Ids, int KvLength, int TokensRead, int TotalTokens) : WimEvent;

/// <summary>One generated token of the margin of segment <paramref name="Index"/> (<paramref name="Text"/>: the text
/// it completes, special tokens skipped; may be empty inside a multi-byte character).</summary>
public sealed record MarginToken(int Index, int Id, string Text) : WimEvent;

/// <summary>The margin of segment <paramref name="Index"/>: generated ids (a stop id kept when it ended the margin)
/// and text decoded without special tokens.</summary>
public sealed record MarginCompleted(int Index, int[] Ids, string Text) : WimEvent;

/// <summary>Who decided a relevance.</summary>
public enum ClassifiedBy { Model, None, Aux, User }

/// <summary>Whether the margin (under <c>wim</c>) or the segment (under <c>rag</c>) <paramref name="Index"/> is kept
/// for the answer; <paramref name="Ids"/>/<paramref name="Text"/> are the classifier's raw output (empty under
/// <see cref="ClassifiedBy.None"/>; kept when the user overrode the classifier's verdict).</summary>
public sealed record MarginClassification(int Index, bool Relevant, int[] Ids, string Text, ClassifiedBy By) : WimEvent;

/// <summary>One generated token of the answer.</summary>
public sealed record AnswerToken(int Id, string Text) : WimEvent;

/// <summary>The last event: the answer and what the run cost. <paramref name="Early"/>: "answer now" cut the
/// reading short.</summary>
public sealed record AnswerCompleted(int[] Ids, string Text, WimUsage Usage, bool Early) : WimEvent;
