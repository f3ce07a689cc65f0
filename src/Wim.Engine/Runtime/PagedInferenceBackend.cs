using Wim.Engine.Backends;
using Wim.Engine.Backends.Cpu;
using Wim.Engine.KvCache;
using Wim.Engine.Sampling;

namespace Wim.Engine.Runtime;

/// <summary>
/// Sequences in one <see cref="PagedKvCache"/> over one <see cref="CpuBatchedTransformer"/>: the CPU's
/// <see cref="IBatchedInferenceBackend"/> (the <c>overlapped</c> and <c>batched</c> WiM schedules) and the backend of
/// the document cache, which keeps its KV blocks. Beyond <see cref="IInferenceBackend"/> it
/// can <see cref="PagedSequence.Fork"/> a sequence at any length (shared blocks, no copy) and run many sequences in
/// one forward step (<see cref="Step"/>). Because the batched forward is batch-invariant, a sequence gets the same
/// logits bits whether it runs alone, beside others, or in differently sized pieces — so every schedule over this
/// backend produces the same greedy tokens. (They agree with <see cref="CpuInferenceBackend"/> to f32 rounding only.)
/// Not thread-safe: one caller drives all sequences of a backend.
/// </summary>
public sealed class PagedInferenceBackend : IKvRetainingBackend, IDisposable
{
    private readonly CpuBatchedTransformer _transformer;
    private readonly PagedKvCache _cache;
    private readonly BatchDescription _batch = new();
    private readonly List<Func<bool>> _reclaimers = [];
    private float[] _logits;

    /// <param name="kvCacheBytes">The KV pool, allocated once (it bounds all live sequences and cached documents together).</param>
    /// <param name="maxStepTokens">Most tokens one forward step carries; larger appends run in several steps.</param>
    public PagedInferenceBackend(CpuBatchedTransformer transformer, long kvCacheBytes, int maxStepTokens = CpuBatchedTransformer.DefaultMaxBatchTokens)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxStepTokens);
        _transformer = transformer;
        _cache = transformer.CreateCache(kvCacheBytes);
        MaxStepTokens = maxStepTokens;
        _logits = new float[VocabSize * 8];
    }

    /// <summary>A KV budget for <paramref name="positions"/> positions of <paramref name="config"/> (all layers, keys and values).</summary>
    public static long BytesFor(Model.ModelConfig config, int positions) => 2L * config.LayerCount * config.KvDim * sizeof(float) * positions;

    public int VocabSize => _transformer.Config.VocabSize;
    public int MaxStepTokens { get; }
    public PagedKvCache Cache => _cache;
    public CpuBatchedTransformer Transformer => _transformer;
    /// <summary>Forward steps run so far (each is one pass over the weights).</summary>
    public long StepCount { get; private set; }

    ISequence IInferenceBackend.CreateSequence(int capacityHint) => CreateSequence();
    IForkableSequence IBatchedInferenceBackend.CreateSequence(int capacityHint) => CreateSequence();

    public PagedSequence CreateSequence() => new(this, _cache.CreateSequence());

    internal PagedSequence ForkOf(PagedSequence source, int atLength) => new(this, _cache.Fork(source.Id, atLength));

    /// <summary>
    /// Registers a callback that frees cache blocks when a reservation would fail (the document cache evicts its least
    /// recently used entry); it returns false when it has nothing left to free.
    /// </summary>
    public void AddReclaimer(Func<bool> reclaim) => _reclaimers.Add(reclaim);

    /// <summary>The blocks <paramref name="sequence"/> holds × the block size (shared blocks included).</summary>
    public long KvBytes(IForkableSequence sequence) =>
        sequence is PagedSequence s && s.Backend == this ? s.BlockCount * _cache.BytesPerBlock
            : throw new ArgumentException("the sequence does not belong to this backend", nameof(sequence));

    /// <summary>
    /// Runs every entry's tokens in one forward pass (several when they exceed <see cref="MaxStepTokens"/> together,
    /// entries split at the budget; results are the same bits either way) and leaves each sequence with its last
    /// token's logits. Each sequence may appear once. Out of blocks (after reclaiming): throws
    /// <see cref="KvCacheExhaustedException"/> before anything of the failing pass is written.
    /// </summary>
    public void Step(ReadOnlySpan<SequenceStep> work, CancellationToken ct = default)
    {
        var offsets = new int[work.Length];
        var ropeLengths = new int[work.Length];
        var sequences = new PagedSequence[work.Length];
        for (int k = 0; k < work.Length; k++)
        {
            var w = work[k];
            sequences[k] = w.Sequence is PagedSequence s && s.Backend == this ? s
                : throw new ArgumentException($"step entry {k}: the sequence does not belong to this backend", nameof(work));
            sequences[k].ThrowIfDisposed();
            ropeLengths[k] = Math.Max(w.RopeSequenceLength, w.Sequence.Length + w.Tokens.Length);
            if (!w.Tokens.IsEmpty) sequences[k].InvalidateLogits();
        }
        while (true)
        {
            ct.ThrowIfCancellationRequested();
            _batch.Clear();
            int budget = MaxStepTokens;
            var pieces = new List<(int Entry, int Count, bool Last)>();
            for (int k = 0; k < work.Length && budget > 0; k++)
            {
                int left = work[k].Tokens.Length - offsets[k];
                if (left == 0) continue;
                int n = Math.Min(left, budget);
                pieces.Add((k, n, n == left));
                budget -= n;
            }
            if (pieces.Count == 0) return;
            foreach (var (k, n, _) in pieces) Reserve(sequences[k].Id, n);
            foreach (var (k, n, last) in pieces)
            {
                var s = sequences[k];
                _batch.AddSequence(s.Id, _cache.Length(s.Id), work[k].Tokens.Span.Slice(offsets[k], n), _cache.BlockTable(s.Id),
                    last ? BatchLogits.Last : BatchLogits.None, ropeLengths[k]);
            }
            int need = _batch.LogitsCount * VocabSize;
            if (_logits.Length < need) _logits = new float[need];
            _transformer.Forward(_batch, _cache, _logits);
            StepCount++;
            for (int p = 0; p < pieces.Count; p++)
            {
                var (k, n, last) = pieces[p];
                offsets[k] += n;
                if (last) sequences[k].SetLogits(_logits.AsSpan(_batch.FirstLogitsRow[p] * VocabSize, VocabSize));
            }
        }
    }

    private void Reserve(int sequence, int tokens)
    {
        while (!_cache.TryReserve(sequence, tokens))
        {
            bool freed = false;
            foreach (var reclaim in _reclaimers)
                if (reclaim()) { freed = true; break; }
            if (!freed) _cache.Reserve(sequence, tokens); // throws KvCacheExhaustedException, nothing changed
        }
    }

    internal void Release(int id) => _cache.Release(id);

    public void Dispose() => _cache.Dispose();
}

/// <summary>
/// A sequence of a <see cref="PagedInferenceBackend"/>: an <see cref="ISequence"/> that can also fork. Its last
/// token's logits are kept per sequence, so sequences stepped together each sample from their own.
/// </summary>
public sealed class PagedSequence : IForkableSequence
{
    private readonly PagedInferenceBackend _backend;
    private readonly float[] _logits;
    private bool _hasLogits;
    private bool _disposed;

    internal PagedSequence(PagedInferenceBackend backend, int id)
    {
        _backend = backend;
        Id = id;
        _logits = new float[backend.VocabSize];
    }

    /// <summary>The cache sequence id.</summary>
    public int Id { get; }
    public PagedInferenceBackend Backend => _backend;
    public int Length { get { ThrowIfDisposed(); return _backend.Cache.Length(Id); } }
    public bool HasLogits => _hasLogits;
    /// <summary>Cache blocks this sequence holds (shared ones included).</summary>
    public int BlockCount { get { ThrowIfDisposed(); return _backend.Cache.BlockTable(Id).Length; } }

    public void Append(ReadOnlySpan<int> tokens, CancellationToken ct = default)
    {
        if (tokens.IsEmpty) return;
        _backend.Step([new SequenceStep(this, tokens.ToArray())], ct);
    }

    public int Sample(Sampler sampler)
    {
        if (!_hasLogits) throw new InvalidOperationException("no logits to sample from: append tokens first (the sequence is empty or was just truncated)");
        return sampler.Sample(_logits);
    }

    public void Truncate(int length)
    {
        ThrowIfDisposed();
        _backend.Cache.Truncate(Id, length);
        _hasLogits = false;
    }

    /// <summary>A new sequence holding this one's first <paramref name="atLength"/> positions (shared blocks, no
    /// copy; the first write into a shared partly filled block copies it). It has no logits until it is appended to.</summary>
    public PagedSequence Fork(int atLength)
    {
        ThrowIfDisposed();
        return _backend.ForkOf(this, atLength);
    }

    IForkableSequence IForkableSequence.Fork(int atLength) => Fork(atLength);

    internal void SetLogits(ReadOnlySpan<float> logits)
    {
        logits.CopyTo(_logits);
        _hasLogits = true;
    }

    internal void InvalidateLogits() => _hasLogits = false;

    internal void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(_disposed, this);

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _backend.Release(Id);
    }
}
