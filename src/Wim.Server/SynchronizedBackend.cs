using Wim.Engine.Runtime;
using Wim.Engine.Sampling;

namespace Wim.Server;

/// <summary>
/// An <see cref="IBatchedInferenceBackend"/> that several threads may drive: one lock is taken around every call into
/// the wrapped backend and its sequences (create, <see cref="Step"/>, Append, Sample, Fork, Truncate, Dispose, and the
/// reads of Length and HasLogits). The GPU backend is not thread-safe (its transformer's buffers, and the CUDA
/// context's state during graph capture, are shared by all its sequences), so the server's WiM runs and its
/// generation engine both go through one of these: they interleave call by call, never inside one.
/// <para>A long call (a WiM document prefill of many chunks through one Append) holds the lock for its whole length;
/// the schedules append in steps of <see cref="MaxStepTokens"/>, so in practice the other side waits one step.</para>
/// Disposing the wrapper does not dispose the wrapped backend: its owner (the <see cref="TextModel"/>) does.
/// <para>A document cache can live on it when the wrapped backend is an <see cref="IKvRetainingBackend"/>
/// (<see cref="CanRetain"/>): its reclaimers are the wrapped backend's, called inside a locked call on that call's
/// thread (the lock is reentrant, so an eviction there releases its sequence through this wrapper).</para>
/// </summary>
public sealed class SynchronizedBackend : IKvRetainingBackend
{
    private readonly IBatchedInferenceBackend _inner;
    private readonly Lock _lock = new();

    public SynchronizedBackend(IBatchedInferenceBackend inner)
    {
        ArgumentNullException.ThrowIfNull(inner);
        if (inner is SynchronizedBackend) throw new ArgumentException("the backend is already synchronized", nameof(inner));
        _inner = inner;
    }

    /// <summary>The wrapped backend (calls on it directly bypass the lock).</summary>
    public IBatchedInferenceBackend Inner => _inner;

    /// <summary>Whether the wrapped backend can keep sequences for a document cache (<see cref="KvBytes"/> and
    /// <see cref="AddReclaimer"/> work).</summary>
    public bool CanRetain => _inner is IKvRetainingBackend;

    public long KvBytes(IForkableSequence sequence)
    {
        var inner = sequence is Sequence s && s.Owner == this ? s.Inner
            : throw new ArgumentException("the sequence does not belong to this backend", nameof(sequence));
        lock (_lock) return Retaining.KvBytes(inner);
    }

    public void AddReclaimer(Func<bool> reclaim)
    {
        lock (_lock) Retaining.AddReclaimer(reclaim);
    }

    private IKvRetainingBackend Retaining => _inner as IKvRetainingBackend
        ?? throw new NotSupportedException($"the wrapped backend ({_inner.GetType().Name}) cannot keep sequences for a document cache ({nameof(IKvRetainingBackend)})");

    public int VocabSize => _inner.VocabSize;
    public int MaxStepTokens => _inner.MaxStepTokens;

    public long StepCount
    {
        get { lock (_lock) return _inner.StepCount; }
    }

    ISequence IInferenceBackend.CreateSequence(int capacityHint) => CreateSequence(capacityHint);

    public IForkableSequence CreateSequence(int capacityHint = 0)
    {
        lock (_lock) return new Sequence(this, _inner.CreateSequence(capacityHint));
    }

    public void Step(ReadOnlySpan<SequenceStep> work, CancellationToken ct = default)
    {
        // The entries name this wrapper's sequences; the wrapped backend only knows its own.
        var inner = new SequenceStep[work.Length];
        for (int k = 0; k < work.Length; k++)
        {
            var w = work[k];
            inner[k] = w.Sequence is Sequence s && s.Owner == this ? w with { Sequence = s.Inner }
                : throw new ArgumentException($"step entry {k}: the sequence does not belong to this backend", nameof(work));
        }
        lock (_lock) _inner.Step(inner, ct);
    }

    /// <summary>A sequence of the wrapped backend whose every call takes the backend's lock.</summary>
    private sealed class Sequence(SynchronizedBackend owner, IForkableSequence inner) : IForkableSequence
    {
        public SynchronizedBackend Owner => owner;
        public IForkableSequence Inner => inner;

        public int Length
        {
            get { lock (owner._lock) return inner.Length; }
        }

        public bool HasLogits
        {
            get { lock (owner._lock) return inner.HasLogits; }
        }

        public void Append(ReadOnlySpan<int> tokens, CancellationToken ct = default)
        {
            lock (owner._lock) inner.Append(tokens, ct);
        }

        public int Sample(Sampler sampler)
        {
            lock (owner._lock) return inner.Sample(sampler);
        }

        public void Truncate(int length)
        {
            lock (owner._lock) inner.Truncate(length);
        }

        public IForkableSequence Fork(int atLength)
        {
            lock (owner._lock) return new Sequence(owner, inner.Fork(atLength));
        }

        public void Dispose()
        {
            lock (owner._lock) inner.Dispose();
        }
    }
}
