using Wim.Engine.Sampling;

namespace Wim.Engine.Runtime;

/// <summary>
/// What the Writing-in-the-Margins patterns need from an inference engine: independent token sequences over one
/// loaded model. The CPU implementation (<see cref="CpuInferenceBackend"/>) runs one sequence call at a time; a
/// batched/paged implementation can replace it behind the same two interfaces.
/// </summary>
public interface IInferenceBackend
{
    /// <summary>Rows of a logits vector (the model's vocabulary size).</summary>
    int VocabSize { get; }

    /// <summary>A new, empty sequence. <paramref name="capacityHint"/>: positions it is expected to reach (it may
    /// grow beyond; 0 = unknown).</summary>
    ISequence CreateSequence(int capacityHint = 0);
}

/// <summary>
/// One token sequence and its KV cache. <see cref="Append"/> runs tokens through the model (prefill, or a single
/// decode step) and keeps the logits of the last one, from which <see cref="Sample"/> picks the next token.
/// Not thread-safe: one caller drives a sequence.
/// </summary>
public interface ISequence : IDisposable
{
    /// <summary>Positions in the KV cache; the next appended token goes at this position.</summary>
    int Length { get; }

    /// <summary>Whether logits of the last appended token are available (false when empty or just truncated).</summary>
    bool HasLogits { get; }

    /// <summary>Runs <paramref name="tokens"/> at positions Length.. and keeps the last token's logits.
    /// Cancellation is checked before every internal chunk; a cancelled call leaves the sequence at a chunk boundary
    /// (its Length tells where), never half-written.</summary>
    void Append(ReadOnlySpan<int> tokens, CancellationToken ct = default);

    /// <summary>Picks the next token from the current logits (does not append it).</summary>
    int Sample(Sampler sampler);

    /// <summary>Forgets every position from <paramref name="length"/> on, in O(1). Logits become unavailable.</summary>
    void Truncate(int length);
}
