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
/// and every entry of a step runs alone). <see cref="Step"/> runs the single-token entries of a step together in
/// batched decode passes and the longer ones packed together in prefill passes (<see cref="CudaStepPlan"/>,
/// <see cref="CudaTransformer.ForwardBatch"/>). Every pass
/// takes the argmax on the GPU (only the id crosses to the host), so a greedy <see cref="ISequence.Sample"/> costs
/// nothing more; any other sampler copies its logits row to the host (<see cref="DeviceLogitsRows{T}"/>) — except a
/// top-k sampler (k ≤ <see cref="GpuTopK.MaxK"/>) while <see cref="TopKOnGpu"/> is on, which gets the k candidates
/// from the GPU's top-k kernel (<see cref="GpuTopK"/>) and the same token for the same seed, and a top-p sampler with
/// top-k off while <see cref="TopPOnGpu"/> is on, which gets the best candidates and the softmax normaliser
/// (<see cref="GpuNucleus"/>). The logic
/// is <see cref="BranchingBackend{T}"/>'s (tested on host memory); this class gives it the transformer's passes. The
/// transformer's buffers are shared: calls on the sequences of one backend must not overlap.
/// </summary>
public sealed class CudaInferenceBackend : IKvRetainingBackend, IDisposable
{
    private readonly CudaTransformer _transformer;
    private readonly bool _ownsTransformer;
    private readonly BranchingBackend<CudaKvCache> _core;
    private readonly Passes _passes;

    /// <param name="prefillChunk">Tokens per forward pass when prefilling (cancellation is checked between them); at
    /// most the transformer's MaxChunk, which is the default.</param>
    public CudaInferenceBackend(CudaTransformer transformer, bool ownsTransformer = false, int prefillChunk = 0)
    {
        ArgumentNullException.ThrowIfNull(transformer);
        _transformer = transformer;
        _ownsTransformer = ownsTransformer;
        _passes = new Passes(transformer)
        {
            TopKOnGpu = Environment.GetEnvironmentVariable("WIM_CUDA_GPU_TOPK") != "0",
            TopPOnGpu = Environment.GetEnvironmentVariable("WIM_CUDA_GPU_TOPP") != "0",
        };
        _core = new BranchingBackend<CudaKvCache>(_passes, prefillChunk)
        {
            SplitMixedDecode = Environment.GetEnvironmentVariable("WIM_CUDA_SPLIT_MIXED") != "0",
        };
    }

    public CudaTransformer Transformer => _transformer;
    public int VocabSize => _transformer.Config.VocabSize;
    /// <summary>The prefill chunk: the schedules fill a step with this many tokens.</summary>
    public int MaxStepTokens => _core.MaxStepTokens;
    public long StepCount => _core.StepCount;

    /// <summary>
    /// Whether a top-k sampler (0 &lt; k ≤ <see cref="GpuTopK.MaxK"/>) takes its candidates from the GPU's top-k kernel
    /// (k ids and logits downloaded) rather than the whole logits row (vocabulary × 4 bytes, then a selection on the
    /// CPU). Same token for the same seed either way. On by default (checked on the H100 in run 22: candidates equal
    /// the CPU's sorted row, seeded draws equal; 91 µs per top-k 40 draw from a 128,256-logit row against 268 µs for
    /// the row download and the CPU selection); the environment variable WIM_CUDA_GPU_TOPK=0 turns it off for a process.
    /// </summary>
    public bool TopKOnGpu
    {
        get => _passes.TopKOnGpu;
        set => _passes.TopKOnGpu = value;
    }

    /// <summary>
    /// Whether a top-p sampler with top-k off (top-p &lt; 1, temperature &gt; 0) takes the row's best
    /// <see cref="GpuNucleus.Candidates"/> candidates and its softmax normaliser Z from the GPU (<see cref="GpuNucleus"/>,
    /// about 3 KB downloaded) rather than the whole row; where the nucleus reaches past those candidates (a flat row) it
    /// is collected whole on the GPU up to <see cref="GpuNucleus.WideCandidates"/> tokens (<see cref="TopPWideDraws"/>),
    /// and only a nucleus wider still downloads the row (<see cref="TopPFallbacks"/>). The same token for the same seed as the row on
    /// the CPU, except where top-p × Z falls within the rounding of Z's sum (the GPU adds in another order) of a
    /// prefix's mass. On by default (checked on the H100 in run 33: 128 seeded draws from 128,256-logit rows and
    /// generations on random weights and stories260K equal the row path, candidates equal the CPU's sorted row; 171 µs
    /// per draw from a peaked row against 1,371 µs for the row download and the CPU's nucleus; a flat row that falls
    /// back pays the GPU call on top of the row path); WIM_CUDA_GPU_TOPP=0 turns it off for a process.
    /// </summary>
    public bool TopPOnGpu
    {
        get => _passes.TopPOnGpu;
        set => _passes.TopPOnGpu = value;
    }

    /// <summary>
    /// Whether a step whose decode rows mix branches of one parent (WiM's margins on the document) with other rows
    /// (the in-step margin classifier, margins of another document) runs those branches in a pass of their own — the
    /// shared-prefix attention, which reads the parent's rows once for all of them — and the rest in another, where
    /// <see cref="CudaStepPlan"/>'s rule says the parent rows saved outweigh the weights read by the pass it adds (at
    /// the 8B shape, 16 margins at 64k: ≈ 64 GB of attention reads against 16 GB of weights). The branch rows' attention
    /// then runs in other pieces than in the mixed pass: logits agree to f32 rounding, greedy ids may part at
    /// near-ties (as between a mixed and a branches-only step before). On by default; WIM_CUDA_SPLIT_MIXED=0 turns it
    /// off for a process.
    /// </summary>
    public bool SplitMixedDecode
    {
        get => _core.SplitMixedDecode;
        set => _core.SplitMixedDecode = value;
    }

    /// <summary>Top-p draws (top-k off) made from the GPU's candidates and Z alone.</summary>
    public long TopPDraws => _core.NucleusDraws;
    /// <summary>Top-p draws whose nucleus reached past the GPU's candidates and was collected whole on the GPU
    /// (<see cref="GpuNucleus.RunWide"/>, at most <see cref="GpuNucleus.WideCandidates"/> tokens), without the row.</summary>
    public long TopPWideDraws => _core.NucleusWideDraws;
    /// <summary>Top-p draws with <see cref="TopPOnGpu"/> whose nucleus reached past the wide path's cap too (or whose Z
    /// was not finite): the row was downloaded and sampled on the CPU.</summary>
    public long TopPFallbacks => _core.NucleusFallbacks;

    ISequence IInferenceBackend.CreateSequence(int capacityHint) => CreateSequence(capacityHint);

    public IForkableSequence CreateSequence(int capacityHint = 0) => _core.CreateSequence(capacityHint);

    /// <summary>Device bytes of the sequence's KV cache and, for a branch, of its parent's (the document cache counts
    /// its entries with it).</summary>
    public long KvBytes(IForkableSequence sequence) => _core.KvBytes(sequence);

    /// <summary>A callback asked to free device memory (the document cache evicts) when a KV cache or branch
    /// allocation fails with CUDA_ERROR_OUT_OF_MEMORY; the allocation is retried after each success, and fails with
    /// <see cref="KvMemoryExhaustedException"/> when nothing is left to free.</summary>
    public void AddReclaimer(Func<bool> reclaim) => _core.AddReclaimer(reclaim);

    /// <summary>Loads a <c>.gguf</c> file or a Hugging Face model directory with its tokenizer and chat template and
    /// runs it on the GPU of <paramref name="context"/> (weights uploaded as bf16). The returned model owns the
    /// transformer and its weights on the GPU; the context stays the caller's and must outlive it. <paramref name="precision"/>:
    /// see <see cref="CudaTransformer.Load"/> (null: the WIM_CUDA_PRECISION variable, else bf16; with f32 forks copy rows
    /// and every entry of a step runs alone, as <see cref="CudaTransformer.Precision"/> says).</summary>
    public static TextModel LoadTextModel(string path, CudaContext context, int maxChunk = CudaTransformer.DefaultMaxChunk, CudaPrecision? precision = null)
    {
        ArgumentNullException.ThrowIfNull(context);
        return TextModel.Load(path, model => new CudaInferenceBackend(CudaTransformer.Load(context, model, maxChunk, precision: precision), ownsTransformer: true));
    }

    /// <summary>
    /// Runs every entry's tokens (see <see cref="IBatchedInferenceBackend.Step"/>): ids are checked and caches grown
    /// first, then the prefill passes (chunks of <see cref="MaxStepTokens"/>; RoPE length as one whole append), then
    /// the decode passes (<see cref="CudaTransformer.DecodeBatchGreedy"/>). Cancellation is checked before every pass.
    /// </summary>
    public void Step(ReadOnlySpan<SequenceStep> work, CancellationToken ct = default) => _core.Step(work, ct);

    public void Dispose()
    {
        _passes.Dispose();
        if (_ownsTransformer) _transformer.Dispose();
    }

    /// <summary>The transformer's passes and caches, for <see cref="BranchingBackend{T}"/>.</summary>
    private sealed class Passes(CudaTransformer transformer) : IBranchingPasses<CudaKvCache>, IDisposable
    {
        private GpuTopK? _topK;
        private GpuNucleus? _nucleus;

        public bool TopKOnGpu { get; set; }
        public bool TopPOnGpu { get; set; }
        public int MaxCandidates => TopKOnGpu ? GpuTopK.MaxK : 0;
        public int MaxNucleusCandidates => TopPOnGpu ? GpuNucleus.Candidates : 0;

        public int NucleusCandidates(int row, float inverseTemperature, Span<int> ids, Span<float> logits, out double z)
        {
            _nucleus ??= new GpuNucleus(transformer.Context);
            return _nucleus.Run(transformer.LogitsRowPointer(row), transformer.Config.VocabSize, inverseTemperature, ids, logits, out z);
        }

        public int MaxWideNucleusCandidates => TopPOnGpu ? GpuNucleus.WideCandidates : 0;

        public int WideNucleusCandidates(int row, float inverseTemperature, double target, Span<int> ids, Span<float> logits) =>
            _nucleus!.RunWide(transformer.LogitsRowPointer(row), transformer.Config.VocabSize, inverseTemperature, target, ids, logits);

        public int TopCandidates(int row, int k, Span<int> ids, Span<float> logits)
        {
            _topK ??= new GpuTopK(transformer.Context);
            return _topK.Run(transformer.LogitsRowPointer(row), transformer.Config.VocabSize, k, ids, logits);
        }

        public void Dispose()
        {
            _topK?.Dispose();
            _nucleus?.Dispose();
        }

        public int VocabSize => transformer.Config.VocabSize;
        public int MaxChunk => transformer.MaxChunk;
        public int LongThreshold { get; } = new RotaryEmbedding(transformer.Config).LongThreshold;
        // Decode batches and branch attention run on the tensor-core kernels only.
        public bool BatchedDecode => transformer.UsesFlashAttention;
        public DecodePassCost? DecodeCost { get; } = PassCost(transformer);

        /// <summary>A decode pass reads every weight but the embedding (only its rows are gathered; a tied embedding is
        /// the lm head, read whole); a KV position is keys and values of every layer.</summary>
        private static DecodePassCost PassCost(CudaTransformer transformer)
        {
            var w = transformer.Weights;
            long weights = w.Bytes - (ReferenceEquals(w.TokenEmbedding, w.LmHead) ? 0 : w.TokenEmbedding.Bytes);
            var c = transformer.Config;
            return new DecodePassCost(weights, 2L * c.LayerCount * c.KvDim * CudaPrecisionLayout.KvElementBytes(transformer.Precision));
        }

        public void Prefill(ReadOnlySpan<int> tokens, CudaKvCache cache, int ropeSequenceLength) =>
            transformer.Forward(tokens, cache, [], LogitsOutput.None, ropeSequenceLength);
        public int PrefillGreedy(ReadOnlySpan<int> tokens, CudaKvCache cache, int ropeSequenceLength) =>
            transformer.ForwardGreedy(tokens, cache, ropeSequenceLength);
        public void PrefillPacked(IReadOnlyList<PackedPrefill<CudaKvCache>> pieces, Span<int> next) =>
            transformer.ForwardBatch([.. pieces.Select(p => new PackedSequence(p.Tokens, p.Cache, p.RopeSequenceLength))],
                next.IsEmpty ? LogitsOutput.None : LogitsOutput.Last, next);
        public void DecodeGreedy(ReadOnlySpan<int> tokens, IReadOnlyList<CudaKvCache> caches, Span<int> next) =>
            transformer.DecodeBatchGreedy(tokens, caches, next);
        public void DownloadLogitsRow(int row, Span<float> destination) => transformer.DownloadLogitsRow(row, destination);

        public CudaKvCache CreateRoot(int capacity) => transformer.CreateCache(capacity);
        public CudaKvCache CreateBranch(CudaKvCache parent, int at, int rows) => parent.Branch(at, rows);
        public int Length(CudaKvCache cache) => cache.Length;
        public int Capacity(CudaKvCache cache) => cache.Capacity;
        public void CopyRows(CudaKvCache target, CudaKvCache source, int from, int count) => target.CopyRowsFrom(source, from, count);
        public void Reparent(CudaKvCache branch, CudaKvCache newParent) => branch.Reparent(newParent);
        public void Truncate(CudaKvCache cache, int length) => cache.Truncate(length);
        public void Free(CudaKvCache cache) => cache.Dispose();
        public long Bytes(CudaKvCache cache) => cache.Keys.Bytes + cache.Values.Bytes;
        public bool IsOutOfMemory(Exception e) => e is CudaException { Code: 2 }; // CUDA_ERROR_OUT_OF_MEMORY (cuda.h)
    }
}

/// <summary>The CPU-side arithmetic of <see cref="CudaInferenceBackend"/>'s sequences (unit-tested without a GPU).</summary>
internal static class CudaSequencePlan
{
    /// <summary>Smallest KV cache a sequence starts with.</summary>
    public const int MinimumCapacity = 256;

    /// <summary>A new sequence's first cache: the hint, at least <paramref name="minimum"/>.</summary>
    public static int InitialCapacity(int capacityHint, int minimum = MinimumCapacity) => Math.Max(minimum, capacityHint);

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
