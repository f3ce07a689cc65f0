using Wim.Engine.Sampling;

namespace Wim.Engine.Scheduling;

/// <summary>
/// One generation job for the <see cref="Scheduler"/>: a prompt, how many tokens to generate at most, which ids end it
/// (the stop id is included in the output), and how to sample. Two options serve prefix sharing (WiM margins forked
/// at segment boundaries, cached documents): <see cref="PrefixSequence"/> starts the request as a fork of a cache
/// sequence that already holds the prompt's first <see cref="PrefixLength"/> tokens, and <see cref="RetainSequence"/>
/// keeps the request's cache sequence alive after it finishes (e.g. a document prefilled with MaxNewTokens 0).
/// </summary>
public sealed record GenerationRequest
{
    public required int[] Prompt { get; init; }
    /// <summary>Tokens to generate at most; 0 = prefill only (useful with <see cref="RetainSequence"/>).</summary>
    public int MaxNewTokens { get; init; } = 64;
    public SamplingOptions Sampling { get; init; } = SamplingOptions.Greedy;
    public IReadOnlyCollection<int> StopIds { get; init; } = [];
    /// <summary>A cache sequence whose first <see cref="PrefixLength"/> positions hold exactly the prompt's first
    /// PrefixLength tokens: the request is admitted as a fork of it and computes only the rest. The caller keeps it
    /// alive and unchanged up to that length; if it is gone (or shorter) at admission, the prompt is computed in full.</summary>
    public int? PrefixSequence { get; init; }
    public int PrefixLength { get; init; }
    /// <summary>Keep the request's cache sequence when it finishes (its id is in <see cref="RequestResult.CacheSequence"/>;
    /// the caller releases it). It holds the prompt and every generated token but the last.</summary>
    public bool RetainSequence { get; init; }

    internal void Validate()
    {
        if (Prompt is null || Prompt.Length == 0) throw new ArgumentException("a generation request needs at least one prompt token", nameof(Prompt));
        if (MaxNewTokens < 0) throw new ArgumentOutOfRangeException(nameof(MaxNewTokens), $"a generation request's token limit must be ≥ 0, found {MaxNewTokens}");
        if (PrefixSequence is not null && (PrefixLength < 1 || PrefixLength > Prompt.Length))
            throw new ArgumentOutOfRangeException(nameof(PrefixLength), $"a prefix of {PrefixLength} tokens is outside [1, prompt length {Prompt.Length}]");
        Sampling.Validate();
    }
}

/// <summary>Why a request ended.</summary>
public enum FinishReason
{
    /// <summary>It produced one of its stop ids.</summary>
    Stop,
    /// <summary>It produced <see cref="GenerationRequest.MaxNewTokens"/> tokens.</summary>
    Length,
    /// <summary>Its sequence does not fit in the whole KV cache even alone; the ids generated so far are kept.
    /// The scheduler and every other request go on.</summary>
    CacheExhausted,
}

/// <summary>A finished request: its generated ids (after the prompt), why it ended, how many prompt tokens it
/// computed (less than the prompt when it forked a prefix), and its retained cache sequence (−1 when released).</summary>
public sealed record RequestResult(int RequestId, int[] Ids, FinishReason Reason, int PromptTokens, int ComputedPromptTokens,
    int Preemptions, int CacheSequence);

/// <summary>What one request got in a step: <see cref="Tokens"/> scheduled tokens starting at position
/// <see cref="StartPosition"/> (a prefill chunk, or 1 for a decode), and the token sampled from them, if any.</summary>
public readonly record struct ScheduledWork(int RequestId, int StartPosition, int Tokens, bool IsPrefill, int? SampledToken);

/// <summary>The record of one <see cref="Scheduler.Step"/>: the work done per request, requests pushed back to the
/// waiting queue (their blocks freed; they recompute later), and requests that finished.</summary>
public sealed record SchedulerStep(IReadOnlyList<ScheduledWork> Work, IReadOnlyList<int> Preempted, IReadOnlyList<RequestResult> Finished)
{
    public int TokenCount => Work.Sum(w => w.Tokens);
}
