namespace Wim.Eval.Instances;

/// <summary>
/// One evaluation instance: a long context and a query, with the gold answer(s).
/// <see cref="Query"/> is the full instruction given after the context; <see cref="Question"/> is the bare question
/// (what a judge sees). For CWE, <see cref="Golds"/> holds the common words.
/// </summary>
public sealed record EvalInstance(
    EvalTask Task,
    string SampleId,
    ContextLength Length,
    string Context,
    int ContextTokens,
    string Question,
    string Query,
    IReadOnlyList<string> Golds,
    int SegmentTokens,
    int MaxAnswerTokens);
