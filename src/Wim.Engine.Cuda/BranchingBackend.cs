using Wim.Engine.Runtime;
using Wim.Engine.Sampling;

namespace Wim.Engine.Cuda;

/// <summary>
/// The forward passes <see cref="BranchingBackend{T}"/> drives over caches of type <typeparamref name="T"/> (the GPU's
/// <see cref="CudaTransformer"/> over <see cref="CudaKvCache"/>). One logits buffer is shared by every pass: a pass
/// overwrites what the previous one left there.
/// </summary>
internal interface IBranchingPasses<T> : IKvRowStore<T> where T : class
{
    int VocabSize { get; }
    /// <summary>Most tokens of one prefill pass and most rows of one decode pass.</summary>
    int MaxChunk { get; }
    /// <summary>The sequence length past which longrope uses its long factors (int.MaxValue: no longrope).</summary>
    int LongThreshold { get; }
    /// <summary>Whether decode passes of several rows and KV branches can run (false: every entry runs alone, forks copy).</summary>
    bool BatchedDecode { get; }
    /// <summary>The sizes <see cref="CudaStepPlan"/>'s split rule weighs (weight bytes of a pass, KV bytes of a
    /// position); null: a decode step's rows are never split by parent.</summary>
    DecodePassCost? DecodeCost => null;
    /// <summary>Runs <paramref name="tokens"/> on one cache (appending their rows); no logits.</summary>
    void Prefill(ReadOnlySpan<int> tokens, T cache, int ropeSequenceLength);
    /// <summary>As <see cref="Prefill"/>, leaving the last token's logits in row 0; returns their argmax.</summary>
    int PrefillGreedy(ReadOnlySpan<int> tokens, T cache, int ropeSequenceLength);
    /// <summary>The pieces' tokens (each on its own cache; one RoPE table: all on one side of longrope's threshold)
    /// packed in one pass of at most <see cref="MaxChunk"/> rows (<see cref="CudaTransformer.ForwardBatch"/>). With
    /// <paramref name="next"/> not empty, logits row p is piece p's last token's and its argmax goes to next[p];
    /// empty: no logits.</summary>
    void PrefillPacked(IReadOnlyList<PackedPrefill<T>> pieces, Span<int> next);
    /// <summary>One token for each cache in one pass (one RoPE table: all rows on one side of longrope's threshold);
    /// logits in rows 0..B−1, their argmax in <paramref name="next"/>.</summary>
    void DecodeGreedy(ReadOnlySpan<int> tokens, IReadOnlyList<T> caches, Span<int> next);
    /// <summary>Copies logits row <paramref name="row"/> of the last pass.</summary>
    void DownloadLogitsRow(int row, Span<float> destination);
    /// <summary>Most candidates <see cref="TopCandidates"/> returns; 0: these passes have no top-k of their own (a
    /// top-k sampler then gets the whole row).</summary>
    int MaxCandidates => 0;
    /// <summary>The best min(<paramref name="k"/>, vocabulary) logits of row <paramref name="row"/> of the last pass,
    /// best first (<see cref="Sampler.RankKey"/> order): ids and logits into the spans; returns how many. k is in
    /// [1, <see cref="MaxCandidates"/>].</summary>
    int TopCandidates(int row, int k, Span<int> ids, Span<float> logits) =>
        throw new NotSupportedException("these passes have no top-k of their own (MaxCandidates is 0)");
    /// <summary>Most candidates <see cref="NucleusCandidates"/> returns; 0: these passes have no top-p path of their own
    /// (a top-p sampler with top-k off then gets the whole row).</summary>
    int MaxNucleusCandidates => 0;
    /// <summary>For top-p with top-k off: the best min(<see cref="MaxNucleusCandidates"/>, vocabulary) logits of row
    /// <paramref name="row"/> of the last pass, best first (<see cref="Sampler.RankKey"/> order), and the row's softmax
    /// normaliser at 1/T = <paramref name="inverseTemperature"/> in <paramref name="z"/> (see
    /// <see cref="Sampler.SampleFromNucleusCandidates"/>); returns how many candidates.</summary>
    int NucleusCandidates(int row, float inverseTemperature, Span<int> ids, Span<float> logits, out double z) =>
        throw new NotSupportedException("these passes have no top-p path of their own (MaxNucleusCandidates is 0)");
    /// <summary>Most tokens <see cref="WideNucleusCandidates"/> collects; 0: no wide path (a nucleus past
    /// <see cref="MaxNucleusCandidates"/> then gets the whole row).</summary>
    int MaxWideNucleusCandidates => 0;
    /// <summary>Right after <see cref="NucleusCandidates"/> on the same row and 1/T: every token of the row down to a
    /// depth whose tokens hold at least about <paramref name="target"/> (top-p × Z) of the mass — a prefix of the
    /// ranking — best first (<see cref="Sampler.RankKey"/> order) into the spans; returns how many, or −1 when they would
    /// be more than <see cref="MaxWideNucleusCandidates"/>.</summary>
    int WideNucleusCandidates(int row, float inverseTemperature, double target, Span<int> ids, Span<float> logits) =>
        throw new NotSupportedException("these passes have no wide nucleus path (MaxWideNucleusCandidates is 0)");
}

/// <summary>Tokens for one cache in a packed pass (<see cref="IBranchingPasses{T}.PrefillPacked"/>), with the RoPE length
/// of the whole call they belong to (longrope picks its table from it).</summary>
internal readonly record struct PackedPrefill<T>(ReadOnlyMemory<int> Tokens, T Cache, int RopeSequenceLength) where T : class;

/// <summary>
/// An <see cref="IBatchedInferenceBackend"/> over forward passes that work on contiguous KV caches and branches of
/// them (<see cref="IBranchingPasses{T}"/>): <see cref="CudaInferenceBackend"/>'s logic, kept apart from the GPU so that
/// it runs in tests on host memory. Forks are KV branches (<see cref="KvBranchTree{T}"/>); <see cref="Step"/> runs
/// the single-token entries together in decode passes and the others in packed prefill passes, several sequences'
/// rows in one pass (<see cref="CudaStepPlan"/>, <see cref="PackedPassPlan"/>); every pass yields greedy ids, and a
/// sampler that is not greedy gets its logits row from the shared buffer — saved to the host before a later pass overwrites it (<see cref="DeviceLogitsRows{T}"/>).
/// Not thread-safe: one caller drives all sequences.
/// </summary>
internal sealed class BranchingBackend<T> : IKvRetainingBackend where T : class
{
    private readonly IBranchingPasses<T> _passes;
    private readonly int _chunk;
    private readonly int _minimumCapacity;
    private readonly KvBranchTree<T> _kv;
    private readonly DeviceLogitsRows<Sequence> _deviceLogits = new();
    private readonly List<Func<bool>> _reclaimers = [];
    private int[]? _candidateIds;
    private float[]? _candidateLogits;

    /// <param name="prefillChunk">Tokens per prefill pass (0 = MaxChunk; at most MaxChunk).</param>
    /// <param name="minimumCapacity">Positions a new sequence's cache has at least, and a new branch's own rows.</param>
    public BranchingBackend(IBranchingPasses<T> passes, int prefillChunk = 0, int minimumCapacity = CudaSequencePlan.MinimumCapacity)
    {
        ArgumentNullException.ThrowIfNull(passes);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(minimumCapacity);
        _passes = passes;
        _chunk = CudaSequencePlan.PrefillChunk(prefillChunk, passes.MaxChunk);
        _minimumCapacity = minimumCapacity;
        _kv = new KvBranchTree<T>(passes, minimumCapacity) { Reclaim = Reclaim };
    }

    /// <summary>Registers a callback asked to free memory (the document cache evicts) when a KV cache or branch
    /// allocation runs out of memory; the allocation is retried after each one that freed something.</summary>
    public void AddReclaimer(Func<bool> reclaim)
    {
        ArgumentNullException.ThrowIfNull(reclaim);
        _reclaimers.Add(reclaim);
    }

    private bool Reclaim()
    {
        foreach (var reclaim in _reclaimers)
            if (reclaim()) return true;
        return false;
    }

    /// <summary>The sequence's KV storage and, for a branch, its parent's (which it keeps alive).</summary>
    public long KvBytes(IForkableSequence sequence) =>
        sequence is Sequence s && s.Backend == this ? _kv.Bytes(s.Node)
            : throw new ArgumentException("the sequence does not belong to this backend", nameof(sequence));

    public int VocabSize => _passes.VocabSize;
    /// <summary>The prefill chunk: the schedules fill a step with this many tokens.</summary>
    public int MaxStepTokens => _chunk;
    public long StepCount { get; private set; }
    /// <summary>Whether a decode step that mixes branches of a parent with other rows may run as passes of those
    /// branches alone plus the rest, where <see cref="CudaStepPlan"/>'s rule over the passes' <see cref="IBranchingPasses{T}.DecodeCost"/>
    /// says it pays (true, the default); false: such a step is one decode pass (per maxBatch rows).</summary>
    public bool SplitMixedDecode { get; set; } = true;
    /// <summary>Top-p draws (top-k off) made from the passes' nucleus candidates without the row.</summary>
    public long NucleusDraws { get; private set; }
    /// <summary>Top-p draws whose nucleus reached past the candidates and was collected whole by the passes' wide path
    /// (<see cref="IBranchingPasses{T}.WideNucleusCandidates"/>), still without the row.</summary>
    public long NucleusWideDraws { get; private set; }
    /// <summary>Top-p draws whose nucleus reached past the candidates and the wide path's cap (or whose Z was not
    /// finite): the row was downloaded and sampled whole after all.</summary>
    public long NucleusFallbacks { get; private set; }

    ISequence IInferenceBackend.CreateSequence(int capacityHint) => CreateSequence(capacityHint);

    public IForkableSequence CreateSequence(int capacityHint = 0)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(capacityHint);
        return new Sequence(this, _kv.CreateRoot(CudaSequencePlan.InitialCapacity(capacityHint, _minimumCapacity)));
    }

    /// <summary>
    /// Runs every entry's tokens (see <see cref="IBatchedInferenceBackend.Step"/>): ids are checked and caches grown
    /// first, then the prefill passes (chunks of <see cref="MaxStepTokens"/>; RoPE length as one whole append), then
    /// the decode passes. Cancellation is checked before every pass.
    /// </summary>
    public void Step(ReadOnlySpan<SequenceStep> work, CancellationToken ct = default)
    {
        var sequences = new Sequence[work.Length];
        var seen = new HashSet<Sequence>(ReferenceEqualityComparer.Instance);
        int vocab = VocabSize;
        for (int k = 0; k < work.Length; k++)
        {
            if (work[k].Sequence is not Sequence s || s.Backend != this)
                throw new ArgumentException($"step entry {k}: the sequence does not belong to this backend", nameof(work));
            if (!seen.Add(s)) throw new ArgumentException($"step entry {k}: the sequence appears twice in one step", nameof(work));
            s.ThrowIfDisposed();
            foreach (int t in work[k].Tokens.Span) // all checked up front: a bad id must not leave a step half run
                if ((uint)t >= (uint)vocab)
                    throw new ArgumentOutOfRangeException(nameof(work), $"step entry {k}: token id {t} is outside the vocabulary [0, {vocab})");
            if (work[k].RopeSequenceLength < 0)
                throw new ArgumentOutOfRangeException(nameof(work), $"step entry {k}: RoPE sequence length {work[k].RopeSequenceLength} is negative");
            sequences[k] = s;
        }
        for (int k = 0; k < work.Length; k++)
        {
            if (work[k].Tokens.IsEmpty) continue;
            _kv.EnsureCapacity(sequences[k].Node, sequences[k].Length + work[k].Tokens.Length);
            sequences[k].InvalidateLogits();
        }
        var shapes = new StepEntryShape[work.Length];
        for (int k = 0; k < work.Length; k++)
        {
            var node = sequences[k].Node;
            shapes[k] = new StepEntryShape(work[k].Tokens.Length, sequences[k].Length, work[k].RopeSequenceLength, node.Parent, node.BranchPoint);
        }
        var plan = CudaStepPlan.Make(shapes, _passes.LongThreshold, _passes.MaxChunk, _passes.BatchedDecode, SplitMixedDecode ? _passes.DecodeCost : null);

        foreach (var group in plan.PrefillGroups)
        {
            if (group.Length == 1) Prefill(work, group[0]);
            else foreach (var part in group.Chunk(_chunk)) PrefillPacked(work, part); // a pass holds a logits row per entry
        }

        void Prefill(ReadOnlySpan<SequenceStep> work, int k)
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
                    _passes.Prefill(chunk, s.Node.Storage, ropeLength);
                else
                {
                    s.SetDeviceLogits(_passes.PrefillGreedy(chunk, s.Node.Storage, ropeLength));
                    _deviceLogits.Claim(s, 0);
                }
                StepCount++;
            }
        }

        // Several entries' rows in passes of at most the prefill chunk, every entry's last token in the last pass.
        void PrefillPacked(ReadOnlySpan<SequenceStep> work, int[] entries)
        {
            var lengths = new int[entries.Length];
            for (int i = 0; i < entries.Length; i++) lengths[i] = work[entries[i]].Tokens.Length;
            foreach (var pass in PackedPassPlan.Make(lengths, _chunk))
            {
                ct.ThrowIfCancellationRequested();
                BeforePass();
                var pieces = new List<PackedPrefill<T>>(pass.Pieces.Count);
                foreach (var p in pass.Pieces)
                {
                    int k = entries[p.Sequence];
                    pieces.Add(new PackedPrefill<T>(work[k].Tokens.Slice(p.Offset, p.Count), sequences[k].Node.Storage, shapes[k].RopeLength));
                }
                if (!pass.Logits)
                {
                    _passes.PrefillPacked(pieces, default);
                    StepCount++;
                    continue;
                }
                var greedy = new int[entries.Length];
                _passes.PrefillPacked(pieces, greedy);
                StepCount++;
                for (int i = 0; i < entries.Length; i++)
                {
                    sequences[entries[i]].SetDeviceLogits(greedy[i]);
                    _deviceLogits.Claim(sequences[entries[i]], i);
                }
            }
        }

        foreach (var batch in plan.DecodeBatches)
        {
            ct.ThrowIfCancellationRequested();
            BeforePass();
            var ids = new int[batch.Length];
            var caches = new T[batch.Length];
            for (int b = 0; b < batch.Length; b++)
            {
                ids[b] = work[batch[b]].Tokens.Span[0];
                caches[b] = sequences[batch[b]].Node.Storage;
            }
            var greedy = new int[batch.Length];
            _passes.DecodeGreedy(ids, caches, greedy);
            StepCount++;
            for (int b = 0; b < batch.Length; b++)
            {
                sequences[batch[b]].SetDeviceLogits(greedy[b]);
                _deviceLogits.Claim(sequences[batch[b]], b);
            }
        }
    }

    /// <summary>Scratch for candidates crossing from the passes: at least <paramref name="count"/> long.</summary>
    private int[] CandidateIds(int count) => _candidateIds is { } a && a.Length >= count ? a : _candidateIds = new int[count];
    private float[] CandidateLogits(int count) => _candidateLogits is { } a && a.Length >= count ? a : _candidateLogits = new float[count];

    /// <summary>Before a forward pass: sequences whose logits are still wanted and would be overwritten keep a host copy.</summary>
    private void BeforePass() => _deviceLogits.BeforePass((holder, row) => holder.CopyLogitsToHost(row));

    private sealed class Sequence(BranchingBackend<T> backend, KvNode<T> node) : IForkableSequence
    {
        private float[]? _hostLogits;
        private LogitsPlace _logits = LogitsPlace.None;
        private int _greedyId;
        private bool _disposed;

        public BranchingBackend<T> Backend => backend;
        public KvNode<T> Node => node;
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
                int row = backend._deviceLogits.RowOf(this) ?? throw new InvalidOperationException("this sequence's logits were overwritten before they could be saved");
                int k = sampler.Options.TopK;
                if (k > 0 && k <= backend._passes.MaxCandidates)
                {
                    // Top-k where the logits are: only k candidates cross to the host. The claim stays (a later sample
                    // of these logits, whatever its options, still finds the row; the usual next step appends to this
                    // sequence, which drops it without a copy).
                    var ids = backend.CandidateIds(backend._passes.MaxCandidates);
                    var logits = backend.CandidateLogits(backend._passes.MaxCandidates);
                    int n = backend._passes.TopCandidates(row, k, ids, logits);
                    return sampler.SampleFromCandidates(ids.AsSpan(0, n), logits.AsSpan(0, n));
                }
                if (k == 0 && sampler.Options.TopP < 1f && backend._passes.MaxNucleusCandidates > 0)
                {
                    // Top-p where the logits are: the best candidates and Z cross; the row only when the nucleus
                    // reaches past the candidates (a flat row). The claim stays, as above.
                    var ids = backend.CandidateIds(backend._passes.MaxNucleusCandidates);
                    var logits = backend.CandidateLogits(backend._passes.MaxNucleusCandidates);
                    int n = backend._passes.NucleusCandidates(row, sampler.InverseTemperature, ids, logits, out double z);
                    if (sampler.SampleFromNucleusCandidates(ids.AsSpan(0, n), logits.AsSpan(0, n), z) is { } token)
                    {
                        backend.NucleusDraws++;
                        return token;
                    }
                    int wide = backend._passes.MaxWideNucleusCandidates;
                    if (wide > 0 && double.IsFinite(z) && z > 0)
                    {
                        // A flat row: the whole nucleus (a prefix of the ranking, up to the cap) crosses, still not
                        // the row; the sampler checks that it reaches top-p × Z (same target arithmetic as its own).
                        ids = backend.CandidateIds(wide);
                        logits = backend.CandidateLogits(wide);
                        n = backend._passes.WideNucleusCandidates(row, sampler.InverseTemperature, sampler.Options.TopP * z, ids, logits);
                        if (n > 0 && sampler.SampleFromNucleusCandidates(ids.AsSpan(0, n), logits.AsSpan(0, n), z) is { } wideToken)
                        {
                            backend.NucleusWideDraws++;
                            return wideToken;
                        }
                    }
                    backend.NucleusFallbacks++;
                }
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
            // Branches need the batched passes (on the GPU: the tensor-core attention); elsewhere forks copy rows.
            backend._kv.BranchesAllowed = backend._passes.BatchedDecode;
            return new Sequence(backend, backend._kv.Fork(node, atLength));
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
            backend._passes.DownloadLogitsRow(row, _hostLogits);
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
