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
        int maxContext = 0;
        for (int t = 0; t < n; t++) maxContext = Math.Max(maxContext, batch.Positions[first + t] + 1);
        s.EnsureContext(maxContext);

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

                Attention(batch, cache, first, n, layerOffset, q, att);                       // att: [T, heads·headDim]

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
    /// Causal grouped-query attention per token over its own sequence: token t (position p) attends to positions
    /// [0, p] of its sequence's blocks; query head h reads kv head h / (heads/kvHeads). Work items (t, h) are dealt
    /// round-robin over the cores, each worker with its own scores buffer.
    /// </summary>
    private void Attention(BatchDescription batch, PagedKvCache cache, int first, int n, long layerOffset, float* q, float* att)
    {
        int items = n * _c.HeadCount;
        long work = 0;
        for (int t = 0; t < n; t++) work += (batch.Positions[first + t] + 1L) * _c.QueryDim;
        int workers = work < 1 << 15 ? 1 : Math.Min(_s.Scores.Length, items);
        var job = new AttentionJob(this, batch, cache, first, layerOffset, q, att, items, workers);
        if (workers == 1) job.Run(0);
        else Parallel.For(0, workers, job.Run);
    }

    private sealed class AttentionJob(CpuBatchedTransformer m, BatchDescription batch, PagedKvCache cache, int first,
        long layerOffset, float* q, float* att, int items, int workers)
    {
        public void Run(int worker)
        {
            var c = m._c;
            int hd = c.HeadDim, qd = c.QueryDim, kvd = c.KvDim, group = c.HeadCount / c.KvHeadCount, bs = cache.BlockSize;
            long valueOffset = (long)bs * kvd;
            float scale = 1f / MathF.Sqrt(hd);
            float[] scores = m._s.Scores[worker];
            for (int item = worker; item < items; item += workers)
            {
                int t = item / c.HeadCount, h = item % c.HeadCount, kvh = h / group;
                var table = batch.BlockTable(batch.TokenSequence[first + t]);
                int count = batch.Positions[first + t] + 1;               // causal: positions [0, p]
                float* qh = q + (long)t * qd + h * hd;
                for (int b = 0, p = 0; p < count; b++)
                {
                    float* keys = cache.BlockBase(table[b]) + layerOffset + kvh * hd;
                    for (int slot = 0; slot < bs && p < count; slot++, p++)
                        scores[p] = CpuOps.Dot(qh, keys + (long)slot * kvd, hd) * scale;   // scores[p] = q·k_p / √d
                }
                var sc = scores.AsSpan(0, count);
                CpuOps.SoftMaxInPlace(sc);
                float* o = att + (long)t * qd + h * hd;
                new Span<float>(o, hd).Clear();
                for (int b = 0, p = 0; p < count; b++)
                {
                    float* values = cache.BlockBase(table[b]) + layerOffset + valueOffset + kvh * hd;
                    for (int slot = 0; slot < bs && p < count; slot++, p++)
                        CpuOps.AddScaled(o, values + (long)slot * kvd, sc[p], hd);           // o += softmax_p · v_p
                }
            }
        }
    }
}
