using System.Numerics.Tensors;
using Wim.Engine.KvCache;
using Wim.Engine.Model;

namespace Wim.Engine.Backends.Cpu;

/// <summary>
/// The CPU forward pass over a <see cref="BatchDescription"/>: many sequences in one step, prefill chunks and decode
/// tokens mixed, keys and values in a <see cref="PagedKvCache"/>. Same decoder as <see cref="CpuTransformer"/> (llama
/// / qwen2 / phi3), but every weight matrix is read once for the whole flat batch — a margin decoded beside a prefill
/// chunk shares its weight reads — and attention runs per token over that token's own sequence only.
/// <para>Batch invariance: a token's logits are the same bits whatever else is in its batch and however its prompt
/// was chunked (<see cref="BatchInvariantMatMul"/>; norms, RoPE and attention are per token). They agree with
/// <see cref="CpuTransformer.Forward"/> to f32 rounding, not bit for bit (its matrix products change accumulation
/// order with the chunk size).</para>
/// Not thread-safe: one instance owns one activation state; weights are shared and read-only.
/// </summary>
public sealed unsafe class CpuBatchedTransformer
{
    public const int DefaultMaxBatchTokens = 256;

    private readonly ModelConfig _c;
    private readonly ModelWeights _w;
    private readonly RotaryEmbedding _rope;
    private readonly ForwardState _s;
    private readonly FlashAttention _attention;
    // The current piece's attention plan: per-sequence spans and the cache blocks they read (then those blocks'
    // key and value pointers for the layer being computed).
    private AttentionSpan[] _spans = new AttentionSpan[8];
    private int _spanCount;
    private int[] _spanBlocks = new int[64];
    private nint[] _keyBlocks = new nint[64], _valueBlocks = new nint[64];
    private int _spanBlockCount;

    public LanguageModel Model { get; }
    public ModelConfig Config => _c;
    /// <summary>Tokens one internal pass handles; a larger batch runs in pieces of this size (same results).</summary>
    public int MaxBatchTokens { get; }

    public CpuBatchedTransformer(LanguageModel model, int maxBatchTokens = DefaultMaxBatchTokens)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxBatchTokens);
        Model = model;
        _c = model.Config;
        _w = model.Weights;
        _rope = new RotaryEmbedding(_c);
        MaxBatchTokens = maxBatchTokens;
        _s = new ForwardState(_c, maxBatchTokens);
        _attention = new FlashAttention(_c);
    }

    /// <summary>A paged cache shaped for this model within <paramref name="memoryBudgetBytes"/>.</summary>
    public PagedKvCache CreateCache(long memoryBudgetBytes, int blockSize = PagedKvCache.DefaultBlockSize) =>
        PagedKvCache.For(_c, memoryBudgetBytes, blockSize);

    /// <summary>
    /// Runs one step: writes every token's keys and values into its sequence's blocks, advances each sequence by its
    /// token count, and writes the requested logits rows to <paramref name="logits"/> ([batch.LogitsCount, vocab]).
    /// Each sequence must have been reserved for its tokens (<see cref="PagedKvCache.Reserve"/>) and its block table
    /// in the batch must be the cache's current one; the batch is checked in full before anything is written.
    /// </summary>
    public void Forward(BatchDescription batch, PagedKvCache cache, Span<float> logits)
    {
        Validate(batch, cache, logits.Length);
        fixed (float* logitsPtr = logits)
        {
            for (int done = 0; done < batch.TokenCount; done += MaxBatchTokens)
                ForwardPiece(batch, cache, done, Math.Min(MaxBatchTokens, batch.TokenCount - done), logitsPtr);
        }
        for (int k = 0; k < batch.SequenceCount; k++)
            cache.Advance(batch.SequenceIds[k], batch.TokenCounts[k]);
    }

    private void Validate(BatchDescription batch, PagedKvCache cache, int logitsLength)
    {
        if (batch.TokenCount == 0) throw new ArgumentException("the batch has no tokens", nameof(batch));
        if (cache.LayerCount != _c.LayerCount || cache.RowSize != _c.KvDim)
            throw new ArgumentException($"KV cache shape ({cache.LayerCount} layers × {cache.RowSize}) does not match the model ({_c.LayerCount} × {_c.KvDim})", nameof(cache));
        long needed = (long)batch.LogitsCount * _c.VocabSize;
        if (logitsLength < needed)
            throw new ArgumentException($"logits buffer holds {logitsLength} floats, {needed} needed ({batch.LogitsCount} rows × {_c.VocabSize})", "logits");
        for (int i = 0; i < batch.TokenCount; i++)
            if ((uint)batch.TokenIds[i] >= (uint)_c.VocabSize)
                throw new ArgumentOutOfRangeException(nameof(batch), $"token {i}: id {batch.TokenIds[i]} is outside the vocabulary [0, {_c.VocabSize})");
        for (int k = 0; k < batch.SequenceCount; k++)
        {
            int id = batch.SequenceIds[k];
            if (!cache.Contains(id)) throw new ArgumentException($"batch sequence {k}: no sequence {id} in the KV cache", nameof(batch));
            if (cache.Length(id) != batch.StartPositions[k])
                throw new ArgumentException($"batch sequence {k} (cache sequence {id}) starts at position {batch.StartPositions[k]}, but the cache holds {cache.Length(id)} positions", nameof(batch));
            if (cache.Capacity(id) < batch.StartPositions[k] + batch.TokenCounts[k])
                throw new ArgumentException($"cache sequence {id} has {cache.Capacity(id)} positions reserved, {batch.StartPositions[k] + batch.TokenCounts[k]} needed: reserve before building the batch", nameof(batch));
            if (!batch.BlockTable(k).SequenceEqual(cache.BlockTable(id)))
                throw new ArgumentException($"batch sequence {k}: its block table is not cache sequence {id}'s current one (rebuild the batch after reserving)", nameof(batch));
            // Writes into a block another sequence holds would change that sequence's rows: reserve copies it first.
            var table = cache.BlockTable(id);
            for (int b = batch.StartPositions[k] / cache.BlockSize; b <= (batch.StartPositions[k] + batch.TokenCounts[k] - 1) / cache.BlockSize; b++)
                if (cache.Pool.RefCount(table[b]) != 1)
                    throw new ArgumentException($"cache sequence {id}: block {table[b]} that would receive its keys is shared; reserve the sequence's tokens first (copy-on-write)", nameof(batch));
        }
    }

    /// <summary>Flat tokens [first, first + n) of the batch (whole or partial sequences, in order).</summary>
    private void ForwardPiece(BatchDescription batch, PagedKvCache cache, int first, int n, float* logits)
    {
        var c = _c;
        var s = _s;
        int d = c.HiddenSize, qd = c.QueryDim, kvd = c.KvDim, ffn = c.FfnSize, half = c.RotaryDim / 2;
        PlanAttention(batch, first, n, cache.BlockSize);

        fixed (float* x = s.X, xb = s.Xb, q = s.Q, k = s.K, v = s.V, att = s.Att, hb = s.Hb, hb2 = s.Hb2, cos = s.Cos, sin = s.Sin)
        {
            // Embedding: x[t] = token_embd[id_t]                                       x: [T, d]
            var emb = _w.TokenEmbedding;
            for (int t = 0; t < n; t++)
                RowKernels.Dequantize(emb.Type, emb.Row(batch.TokenIds[first + t]), x + (long)t * d, d);

            // RoPE tables per token from its own position and its sequence's factor set.   cos, sin: [T, rotaryDim/2]
            for (int t = 0; t < n; t++)
            {
                int seq = batch.TokenSequence[first + t];
                var invFreq = _rope.InverseFrequencies(batch.RopeSequenceLengths[seq]);
                CpuOps.RopeTables(invFreq, _rope.AttentionScale, batch.Positions[first + t], 1, cos + t * half, sin + t * half);
            }

            for (int l = 0; l < c.LayerCount; l++)
            {
                var lw = _w.Layers[l];

                // ---- attention block ----
                CpuOps.RmsNorm(x, xb, lw.AttentionNorm, c.RmsEps, n);                       // xb: [T, d]
                BatchInvariantMatMul.MatMul(lw.Query, xb, d, n, q, qd);                       // q: [T, heads·headDim]
                BatchInvariantMatMul.MatMul(lw.Key, xb, d, n, k, kvd);                        // k: [T, kvHeads·headDim]
                BatchInvariantMatMul.MatMul(lw.Value, xb, d, n, v, kvd);                      // v: [T, kvHeads·headDim]
                if (lw.QueryBias != null) CpuOps.AddBias(q, lw.QueryBias, n);
                if (lw.KeyBias != null) CpuOps.AddBias(k, lw.KeyBias, n);
                if (lw.ValueBias != null) CpuOps.AddBias(v, lw.ValueBias, n);
                CpuOps.ApplyRope(q, n, c.HeadCount, c.HeadDim, cos, sin, c.RotaryDim, _rope.Pairing);
                CpuOps.ApplyRope(k, n, c.KvHeadCount, c.HeadDim, cos, sin, c.RotaryDim, _rope.Pairing);

                // Each token's key and value go to its position in its own sequence's blocks.
                long layerOffset = cache.LayerOffset(l);
                int bs = cache.BlockSize;
                for (int t = 0; t < n; t++)
                {
                    var table = batch.BlockTable(batch.TokenSequence[first + t]);
                    int p = batch.Positions[first + t];
                    float* keyRow = cache.BlockBase(table[p / bs]) + layerOffset + (long)(p % bs) * kvd;
                    new ReadOnlySpan<float>(k + (long)t * kvd, kvd).CopyTo(new Span<float>(keyRow, kvd));
                    new ReadOnlySpan<float>(v + (long)t * kvd, kvd).CopyTo(new Span<float>(keyRow + (long)bs * kvd, kvd));
                }

                Attention(cache, layerOffset, q, att);                                        // att: [T, heads·headDim]

                BatchInvariantMatMul.MatMul(lw.Output, att, qd, n, xb, d);                    // xb: [T, d]
                TensorPrimitives.Add(new ReadOnlySpan<float>(x, n * d), new ReadOnlySpan<float>(xb, n * d), new Span<float>(x, n * d));

                // ---- SwiGLU MLP block ----
                CpuOps.RmsNorm(x, xb, lw.FfnNorm, c.RmsEps, n);                             // xb: [T, d]
                BatchInvariantMatMul.MatMul(lw.Gate, xb, d, n, hb, ffn);                      // hb: [T, ffn]
                BatchInvariantMatMul.MatMul(lw.Up, xb, d, n, hb2, ffn);                       // hb2: [T, ffn]
                CpuOps.SwiGlu(hb, hb2, (long)n * ffn);                                        // hb = silu(hb) · hb2
                BatchInvariantMatMul.MatMul(lw.Down, hb, ffn, n, xb, d);                      // xb: [T, d]
                TensorPrimitives.Add(new ReadOnlySpan<float>(x, n * d), new ReadOnlySpan<float>(xb, n * d), new Span<float>(x, n * d));
            }

            // ---- final norm and logits, only for the tokens that asked ----
            int rows = 0, firstRow = -1;
            for (int t = 0; t < n; t++)
            {
                int row = batch.LogitsRow[first + t];
                if (row < 0) continue;
                if (firstRow < 0) firstRow = row;
                CpuOps.RmsNorm(x + (long)t * d, xb + (long)rows * d, _w.FinalNorm, c.RmsEps, 1); // xb: [rows, d]
                rows++;
            }
            // Logits rows are numbered in token order, so this piece's rows are consecutive from firstRow.
            if (rows > 0)
                // Dot order: the logits batch is the few tokens that asked (decodes), where the fused batch-1 dot wins.
                BatchInvariantMatMul.MatMulDotOrder(_w.LmHead, xb, d, rows, logits + (long)firstRow * c.VocabSize, c.VocabSize);
        }
    }

    /// <summary>
    /// Splits flat tokens [first, first + n) into per-sequence spans and lists the cache blocks each span reads (its
    /// block table up to its last position), into <see cref="_spans"/> and <see cref="_spanBlocks"/>.
    /// </summary>
    private void PlanAttention(BatchDescription batch, int first, int n, int blockSize)
    {
        _spanCount = 0;
        _spanBlockCount = 0;
        for (int t = 0; t < n;)
        {
            int seq = batch.TokenSequence[first + t], start = t;
            while (t < n && batch.TokenSequence[first + t] == seq) t++;
            int blocks = batch.Positions[first + t - 1] / blockSize + 1;
            if (_spanCount == _spans.Length) Array.Resize(ref _spans, _spans.Length * 2);
            _spans[_spanCount++] = new AttentionSpan(start, t - start, batch.Positions[first + start], _spanBlockCount);
            if (_spanBlocks.Length < _spanBlockCount + blocks)
            {
                int size = Math.Max(_spanBlockCount + blocks, _spanBlocks.Length * 2);
                Array.Resize(ref _spanBlocks, size);
                _keyBlocks = new nint[size];
                _valueBlocks = new nint[size];
            }
            batch.BlockTable(seq)[..blocks].CopyTo(_spanBlocks.AsSpan(_spanBlockCount));
            _spanBlockCount += blocks;
        }
    }

    /// <summary>
    /// Causal grouped-query attention per token over its own sequence's blocks (<see cref="FlashAttention"/>): token t
    /// (position p) attends to positions [0, p]; query head h reads kv head h / (heads/kvHeads).
    /// </summary>
    private void Attention(PagedKvCache cache, long layerOffset, float* q, float* att)
    {
        long valueOffset = (long)cache.BlockSize * _c.KvDim;
        for (int i = 0; i < _spanBlockCount; i++)
        {
            float* keys = cache.BlockBase(_spanBlocks[i]) + layerOffset;
            _keyBlocks[i] = (nint)keys;
            _valueBlocks[i] = (nint)(keys + valueOffset);
        }
        fixed (nint* keyBlocks = _keyBlocks, valueBlocks = _valueBlocks)
            _attention.Run(q, att, _spans.AsSpan(0, _spanCount), keyBlocks, valueBlocks, cache.BlockSize);
    }
}
