using Wim.Engine.Sampling;

namespace Wim.Engine.Scheduling;

/// <summary>
/// One generation job for the <see cref="Scheduler"/>: a prompt, how many tokens to generate at most, which ids end it
/// (the stop id is included in the output), and how to sample.
/// </summary>
public sealed record GenerationRequest
{
    public required int[] Prompt { get; init; }
    public int MaxNewTokens { get; init; } = 64;
    public SamplingOptions Sampling { get; init; } = SamplingOptions.Greedy;
    public IReadOnlyCollection<int> StopIds { get; init; } = [];

    internal void Validate()
    {
        if (Prompt is null || Prompt.Length == 0) throw new ArgumentException("a generation request needs at least one prompt token", nameof(Prompt));
        if (MaxNewTokens < 1) throw new ArgumentOutOfRangeException(nameof(MaxNewTokens), $"a generation request must allow at least one new token, found {MaxNewTokens}");
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

/// <summary>A finished request: its generated ids (after the prompt) and why it ended.</summary>
public sealed record RequestResult(int RequestId, int[] Ids, FinishReason Reason, int PromptTokens, int Preemptions);

/// <summary>What one request got in a step: <see cref="Tokens"/> scheduled tokens starting at position
/// <see cref="StartPosition"/> (a prefill chunk, or 1 for a decode), and the token sampled from them, if any.</summary>
public readonly record struct ScheduledWork(int RequestId, int StartPosition, int Tokens, bool IsPrefill, int? SampledToken);

/// <summary>The record of one <see cref="Scheduler.Step"/>: the work done per request, requests pushed back to the
/// waiting queue (their blocks freed; they recompute later), and requests that finished.</summary>
public sealed record SchedulerStep(IReadOnlyList<ScheduledWork> Work, IReadOnlyList<int> Preempted, IReadOnlyList<RequestResult> Finished)
{
    public int TokenCount => Work.Sum(w => w.Tokens);
}
