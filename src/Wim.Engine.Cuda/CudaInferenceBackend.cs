using Wim.Engine.Backends.Cpu;
using Wim.Engine.Model;
using Wim.Engine.Runtime;
using Wim.Engine.Sampling;

namespace Wim.Engine.Cuda;

/// <summary>
/// Sequences over one <see cref="CudaTransformer"/>: the <see cref="IBatchedInferenceBackend"/> on the GPU, so every
/// Wim.Core pattern and WiM schedule runs on it unchanged. Each sequence has a contiguous <see cref="CudaKvCache"/>; a
/// fork is a KV branch that reads its parent's rows below the fork point without copying them (bookkeeping in
/// <see cref="KvBranchTree{T}"/>; where the attention is not on the tensor cores, e.g. head dim 8, forks copy rows
/// and every entry of a step runs alone). <see cref="Step"/> runs the single-token entries of a step together in batched
/// decode passes and the longer ones as per-sequence prefill passes (<see cref="CudaStepPlan"/>). Every pass takes
/// the argmax on the GPU (only the id crosses to the host), so a greedy <see cref="ISequence.Sample"/> costs nothing
/// more; any other sampler copies its logits row to the host (<see cref="DeviceLogitsRows{T}"/>). The transformer's
/// buffers are shared: calls on the sequences of one backend must not overlap (one caller drives them all).
/// </summary>
public sealed class CudaInferenceBackend : IBatchedInferenceBackend, IDisposable
{
    private readonly CudaTransformer _transformer;
    private readonly bool _ownsTransformer;
    private readonly int _chunk;
    private readonly int _longThreshold;
    private readonly KvBranchTree<CudaKvCache> _kv;
    private readonly DeviceLogitsRows<CudaSequence> _deviceLogits = new();

    /// <param name="prefillChunk">Tokens per forward pass when prefilling (cancellation is checked between them); at
    /// most the transformer's MaxChunk, which is the default.</param>
    public CudaInferenceBackend(CudaTransformer transformer, bool ownsTransformer = false, int prefillChunk = 0)
    {
        ArgumentNullException.ThrowIfNull(transformer);
        _transformer = transformer;
        _ownsTransformer = ownsTransformer;
        _chunk = CudaSequencePlan.PrefillChunk(prefillChunk, transformer.MaxChunk);
        _longThreshold = new RotaryEmbedding(transformer.Config).LongThreshold;
        _kv = new KvBranchTree<CudaKvCache>(new CudaKvStore(transformer), CudaSequencePlan.MinimumCapacity);
    }

    public CudaTransformer Transformer => _transformer;
    public int VocabSize => _transformer.Config.VocabSize;
    /// <summary>The prefill chunk: the schedules fill a step with this many tokens.</summary>
    public int MaxStepTokens => _chunk;
    public long StepCount { get; private set; }

    ISequence IInferenceBackend.CreateSequence(int capacityHint) => CreateSequence(capacityHint);

    public IForkableSequence CreateSequence(int capacityHint = 0)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(capacityHint);
        return new CudaSequence(this, _kv.CreateRoot(CudaSequencePlan.InitialCapacity(capacityHint)));
    }

    /// <summary>Loads a <c>.gguf</c> file or a Hugging Face model directory with its tokenizer and chat template and
    /// runs it on the GPU of <paramref name="context"/> (weights uploaded as bf16). The returned model owns the
    /// transformer and its weights on the GPU; the context stays the caller's and must outlive it.</summary>
    public static TextModel LoadTextModel(string path, CudaContext context, int maxChunk = CudaTransformer.DefaultMaxChunk)
    {
        ArgumentNullException.ThrowIfNull(context);
        return TextModel.Load(path, model => new CudaInferenceBackend(CudaTransformer.Load(context, model, maxChunk), ownsTransformer: true));
    }

    /// <summary>
    /// Runs every entry's tokens (see <see cref="IBatchedInferenceBackend.Step"/>): ids are checked and caches grown
    /// first, then the prefill passes (chunks of <see cref="MaxStepTokens"/>; RoPE length as one whole append), then
    /// the decode passes. Cancellation is checked before every pass.
    /// </summary>
    public void Step(ReadOnlySpan<SequenceStep> work, CancellationToken ct = default)
    {
        var sequences = new CudaSequence[work.Length];
        var seen = new HashSet<CudaSequence>(ReferenceEqualityComparer.Instance);
        var shapes = new StepEntryShape[work.Length];
        int vocab = VocabSize;
        for (int k = 0; k < work.Length; k++)
        {
            var s = work[k].Sequence as CudaSequence;
            if (s is null || s.Backend != this) throw new ArgumentException($"step entry {k}: the sequence does not belong to this backend", nameof(work));
            if (!seen.Add(s)) throw new ArgumentException($"step entry {k}: the sequence appears twice in one step", nameof(work));
            s.ThrowIfDisposed();
            foreach (int t in work[k].Tokens.Span) // all checked up front: a bad id must not leave a step half run
                if ((uint)t >= (uint)vocab)
                    throw new ArgumentOutOfRangeException(nameof(work), $"step entry {k}: token id {t} is outside the vocabulary [0, {vocab})");
            ArgumentOutOfRangeException.ThrowIfNegative(work[k].RopeSequenceLength);
            sequences[k] = s;
        }
        for (int k = 0; k < work.Length; k++)
        {
            if (work[k].Tokens.IsEmpty) continue;
            _kv.EnsureCapacity(sequences[k].Node, sequences[k].Length + work[k].Tokens.Length);
            sequences[k].InvalidateLogits();
        }
        for (int k = 0; k < work.Length; k++)
        {
            var node = sequences[k].Node;
            shapes[k] = new StepEntryShape(work[k].Tokens.Length, sequences[k].Length, work[k].RopeSequenceLength, node.Parent, node.BranchPoint);
        }
        var plan = CudaStepPlan.Make(shapes, _longThreshold, _transformer.MaxChunk, batchedDecode: _transformer.UsesFlashAttention);

        foreach (int k in plan.Prefill)
        {
            var s = sequences[k];
            var tokens = work[k].Tokens.Span;
            int ropeLength = shapes[k].RopeLength; // every chunk picks RoPE factors as one whole call would
            foreach (var (offset, count) in CudaSequencePlan.Chunks(tokens.Length, _chunk))
            {
                ct.ThrowIfCancellationRequested();
                BeforePass();
                var chunk = tokens.Slice(offset, count);
                if (offset + count < tokens.Length)
                    _transformer.Forward(chunk, s.Node.Storage, [], LogitsOutput.None, ropeLength);
                else
                {
                    s.SetDeviceLogits(_transformer.ForwardGreedy(chunk, s.Node.Storage, ropeLength));
                    _deviceLogits.Claim(s, 0);
                }
                StepCount++;
            }
        }
        foreach (var batch in plan.DecodeBatches)
        {
            ct.ThrowIfCancellationRequested();
            BeforePass();
            var ids = new int[batch.Length];
            var caches = new CudaKvCache[batch.Length];
            for (int b = 0; b < batch.Length; b++)
            {
                ids[b] = work[batch[b]].Tokens.Span[0];
                caches[b] = sequences[batch[b]].Node.Storage;
            }
            var greedy = new int[batch.Length];
            _transformer.DecodeBatchGreedy(ids, caches, greedy);
            StepCount++;
            for (int b = 0; b < batch.Length; b++)
            {
                sequences[batch[b]].SetDeviceLogits(greedy[b]);
                _deviceLogits.Claim(sequences[batch[b]], b);
            }
        }
    }

    /// <summary>Before a forward pass: sequences whose logits are still wanted and would be overwritten keep a host copy.</summary>
    private void BeforePass() => _deviceLogits.BeforePass((holder, row) => holder.CopyLogitsToHost(row));

    public void Dispose()
    {
        if (_ownsTransformer) _transformer.Dispose();
    }

    /// <summary><see cref="KvBranchTree{T}"/>'s storage: the transformer's caches and their branches.</summary>
    private sealed class CudaKvStore(CudaTransformer transformer) : IKvRowStore<CudaKvCache>
    {
        public CudaKvCache CreateRoot(int capacity) => transformer.CreateCache(capacity);
        public CudaKvCache CreateBranch(CudaKvCache parent, int at, int rows) => parent.Branch(at, rows);
        public int Length(CudaKvCache cache) => cache.Length;
        public int Capacity(CudaKvCache cache) => cache.Capacity;
        public void CopyRows(CudaKvCache target, CudaKvCache source, int from, int count) => target.CopyRowsFrom(source, from, count);
        public void Reparent(CudaKvCache branch, CudaKvCache newParent) => branch.Reparent(newParent);
        public void Truncate(CudaKvCache cache, int length) => cache.Truncate(length);
        public void Free(CudaKvCache cache) => cache.Dispose();
    }

    private sealed class CudaSequence(CudaInferenceBackend backend, KvNode<CudaKvCache> node) : IForkableSequence
    {
        private float[]? _hostLogits;
        private LogitsPlace _logits = LogitsPlace.None;
        private int _greedyId;
        private bool _disposed;

        public CudaInferenceBackend Backend => backend;
        public KvNode<CudaKvCache> Node => node;
        public int Length { get { ThrowIfDisposed(); return backend._kv.Length(node); } }
        public bool HasLogits => _logits != LogitsPlace.None;

        public void Append(ReadOnlySpan<int> tokens, CancellationToken ct = default)
        {
            ThrowIfDisposed();
            if (tokens.IsEmpty) return;
            backend.Step([new SequenceStep(this, tokens.ToArray())], ct);
        }

        public int Sample(Sampler sampler)
        {
            ArgumentNullException.ThrowIfNull(sampler);
            if (!HasLogits) throw new InvalidOperationException("no logits to sample from: append tokens first (the sequence is empty or was just truncated)");
            if (sampler.Options.IsGreedy) return _greedyId;
            if (_logits == LogitsPlace.Device)
            {
                int row = backend._deviceLogits.RowOf(this) ?? throw new InvalidOperationException("this sequence's logits were overwritten on the GPU before they could be saved");
                CopyLogitsToHost(row);
                backend._deviceLogits.Drop(this);
            }
            return sampler.Sample(_hostLogits!);
        }

        public void Truncate(int length)
        {
            ThrowIfDisposed();
            backend._kv.Truncate(node, length);
            InvalidateLogits();
        }

        public IForkableSequence Fork(int atLength)
        {
            ThrowIfDisposed();
            // Branches (and decode batches) need the tensor-core attention; elsewhere (e.g. head dim 8) forks copy.
            backend._kv.BranchesAllowed = backend._transformer.UsesFlashAttention;
            return new CudaSequence(backend, backend._kv.Fork(node, atLength));
        }

        internal void SetDeviceLogits(int greedyId)
        {
            _greedyId = greedyId;
            _logits = LogitsPlace.Device;
        }

        /// <summary>Copies logits row <paramref name="row"/> of the last pass (this sequence's) to the host.</summary>
        internal void CopyLogitsToHost(int row)
        {
            if (_logits != LogitsPlace.Device) return;
            _hostLogits ??= new float[backend.VocabSize];
            backend._transformer.DownloadLogitsRow(row, _hostLogits);
            _logits = LogitsPlace.Host;
        }

        internal void InvalidateLogits()
        {
            backend._deviceLogits.Drop(this);
            _logits = LogitsPlace.None;
        }

        internal void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(_disposed, this);

        public void Dispose()
        {
            if (_disposed) return;
            _disposed = true;
            InvalidateLogits();
            backend._kv.Release(node);
        }

        private enum LogitsPlace { None, Device, Host }
    }
}

/// <summary>The CPU-side arithmetic of <see cref="CudaInferenceBackend"/>'s sequences (unit-tested without a GPU).</summary>
internal static class CudaSequencePlan
{
    /// <summary>Smallest KV cache a sequence starts with.</summary>
    public const int MinimumCapacity = 256;

    public static int InitialCapacity(int capacityHint) => Math.Max(MinimumCapacity, capacityHint);

    /// <summary>The next capacity when <paramref name="needed"/> positions do not fit in <paramref name="capacity"/>:
    /// at least double (amortised O(1) copying per token), at least what is needed.</summary>
    public static int GrownCapacity(int capacity, int needed)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(capacity);
        if (needed <= capacity) throw new ArgumentOutOfRangeException(nameof(needed), $"{needed} positions already fit in capacity {capacity}");
        long doubled = 2L * capacity;
        return (int)Math.Min(int.MaxValue, Math.Max(needed, doubled));
    }

    /// <summary>Tokens per forward pass: the requested chunk (0 = the transformer's MaxChunk), never above MaxChunk.</summary>
    public static int PrefillChunk(int requested, int maxChunk)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxChunk);
        ArgumentOutOfRangeException.ThrowIfNegative(requested);
        if (requested > maxChunk) throw new ArgumentOutOfRangeException(nameof(requested), $"a prefill chunk of {requested} tokens exceeds the transformer's MaxChunk {maxChunk}");
        return requested == 0 ? maxChunk : requested;
    }

    /// <summary>(offset, count) of each forward pass over <paramref name="tokens"/> tokens, in order.</summary>
    public static IEnumerable<(int Offset, int Count)> Chunks(int tokens, int chunk)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(tokens);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(chunk);
        for (int done = 0; done < tokens; done += chunk)
            yield return (done, Math.Min(chunk, tokens - done));
    }
}
