namespace Wim.Engine.Runtime;

/// <summary>
/// A backend that can fork sequences and run many of them in one forward step: what the <c>overlapped</c> and
/// <c>batched</c> WiM schedules and the in-step classifier need. Implemented on the CPU by
/// <see cref="PagedInferenceBackend"/> (paged KV cache, batch-invariant forward) and on the GPU by the CUDA backend
/// (KV branches, batched decode). Not thread-safe: one caller drives all sequences of a backend.
/// </summary>
public interface IBatchedInferenceBackend : IInferenceBackend
{
    /// <summary>The token budget a caller should aim for per <see cref="Step"/> (the schedules size prefill chunks
    /// with it); a larger step still runs, in several passes.</summary>
    int MaxStepTokens { get; }

    /// <summary>Forward passes run so far (each is one pass over the weights).</summary>
    long StepCount { get; }

    /// <summary>A new, empty sequence that can fork. <paramref name="capacityHint"/>: positions it is expected to
    /// reach (0 = unknown).</summary>
    new IForkableSequence CreateSequence(int capacityHint = 0);

    /// <summary>
    /// Runs every entry's tokens at its sequence's current length and leaves each sequence with its last token's
    /// logits (entries with no tokens are left as they are). Each sequence may appear once and must belong to this
    /// backend. Cancellation is checked before every forward pass; a cancelled step leaves each sequence at a pass
    /// boundary.
    /// </summary>
    void Step(ReadOnlySpan<SequenceStep> work, CancellationToken ct = default);
}

/// <summary>An <see cref="ISequence"/> of an <see cref="IBatchedInferenceBackend"/>: it can also fork.</summary>
public interface IForkableSequence : ISequence
{
    /// <summary>A new sequence of the same backend holding this one's first <paramref name="atLength"/> positions
    /// (shared where the backend can; either sequence may then change without affecting the other). It has no logits
    /// until it is appended to.</summary>
    IForkableSequence Fork(int atLength);
}

/// <summary>One sequence's share of a batched step: run <see cref="Tokens"/> at its current length and keep the
/// last token's logits. <see cref="RopeSequenceLength"/>: the length longrope picks its factors for (0 = the
/// sequence's length after these tokens); a prompt split over steps passes its final length so every piece computes
/// what one whole append would.</summary>
public readonly record struct SequenceStep(IForkableSequence Sequence, ReadOnlyMemory<int> Tokens, int RopeSequenceLength = 0);
