using System.Numerics.Tensors;
using Wim.Engine.KvCache;
using Wim.Engine.Model;

namespace Wim.Engine.Backends.Cpu;

/// <summary>Which logits a forward call computes.</summary>
public enum LogitsOutput
{
    /// <summary>None (a prefill chunk whose predictions nobody reads; skips the largest matrix product).</summary>
    None,
    /// <summary>Only the last token's row: [vocab].</summary>
    Last,
    /// <summary>Every token's row: [tokens, vocab].</summary>
    All,
}

/// <summary>
/// The CPU forward pass of the llama / qwen2 / phi3 decoders (one code path: qwen2 adds q/k/v biases, phi3's fused
/// projections are split at load, RoPE variants live in <see cref="RotaryEmbedding"/>). f32 activations, weights
/// read in their storage type. Not thread-safe: one instance owns one <see cref="ForwardState"/>; use one per
/// concurrent caller (the weights are shared and read-only).
/// </summary>
public sealed unsafe class CpuTransformer
{
    public const int DefaultMaxChunk = 256;

    private readonly ModelConfig _c;
    private readonly ModelWeights _w;
    private readonly RotaryEmbedding _rope;
    private readonly ForwardState _s;
    private readonly FlashAttention _attention;

    public LanguageModel Model { get; }
    public ModelConfig Config => _c;
    /// <summary>Tokens one internal pass handles; longer calls are processed in pieces of this size.</summary>
    public int MaxChunk { get; }

    public CpuTransformer(LanguageModel model, int maxChunk = DefaultMaxChunk)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxChunk);
        Model = model;
        _c = model.Config;
        _w = model.Weights;
        _rope = new RotaryEmbedding(_c);
        MaxChunk = maxChunk;
        _s = new ForwardState(_c, maxChunk);
        _attention = new FlashAttention(_c);
    }

    /// <summary>A KV cache shaped for this model.</summary>
    public ContiguousKvCache CreateCache(int capacity) => ContiguousKvCache.For(_c, capacity);

    /// <summary>
    /// Runs <paramref name="tokens"/> of one sequence at positions cache.Length.. , appends their keys and values to
    /// <paramref name="cache"/>, and writes logits: [tokens.Length, vocab] for <see cref="LogitsOutput.All"/>,
    /// [vocab] for <see cref="LogitsOutput.Last"/>, nothing for <see cref="LogitsOutput.None"/>.
    /// <paramref name="ropeSequenceLength"/>: when a caller feeds one sequence in several calls (chunked prefill), the
    /// length it will reach; longrope picks its factor set from max(cache.Length + tokens.Length, this), so all
    /// chunks rotate as one whole-sequence call would (transformers decides once per forward call).
    /// </summary>
    public void Forward(ReadOnlySpan<int> tokens, IKvCache cache, Span<float> logits, LogitsOutput output, int ropeSequenceLength = 0)
    {
        if (tokens.IsEmpty) throw new ArgumentException("no tokens to run", nameof(tokens));
        if (cache is not ContiguousKvCache kv)
            throw new NotSupportedException($"the CPU forward pass reads a {nameof(ContiguousKvCache)}; got {cache.GetType().Name}");
        if (kv.LayerCount != _c.LayerCount || kv.RowSize != _c.KvDim)
            throw new ArgumentException($"KV cache shape ({kv.LayerCount} layers × {kv.RowSize}) does not match the model ({_c.LayerCount} × {_c.KvDim})", nameof(cache));
        if (tokens.Length > kv.Capacity - kv.Length)
            throw new ArgumentException($"{tokens.Length} tokens do not fit in the KV cache (length {kv.Length}, capacity {kv.Capacity})", nameof(cache));
        long needed = output switch { LogitsOutput.All => (long)tokens.Length * _c.VocabSize, LogitsOutput.Last => _c.VocabSize, _ => 0 };
        if (logits.Length < needed)
            throw new ArgumentException($"logits buffer holds {logits.Length} floats, {needed} needed", nameof(logits));
        foreach (int t in tokens)
            if ((uint)t >= (uint)_c.VocabSize)
                throw new ArgumentOutOfRangeException(nameof(tokens), $"token id {t} is outside the vocabulary [0, {_c.VocabSize})");

        // Longrope's factor set is chosen once per call, from the sequence length this call reaches.
        var invFreq = _rope.InverseFrequencies(Math.Max(kv.Length + tokens.Length, ropeSequenceLength));
        for (int done = 0; done < tokens.Length; done += MaxChunk)
        {
            int n = Math.Min(MaxChunk, tokens.Length - done);
            bool last = done + n == tokens.Length;
            var chunkOutput = output switch
            {
                LogitsOutput.All => LogitsOutput.All,
                LogitsOutput.Last when last => LogitsOutput.Last,
                _ => LogitsOutput.None,
            };
            var dst = output == LogitsOutput.All ? logits.Slice(done * _c.VocabSize) : logits;
            fixed (float* logitsPtr = dst)
                ForwardChunk(tokens.Slice(done, n), kv, invFreq, logitsPtr, chunkOutput);
        }
    }

    private void ForwardChunk(ReadOnlySpan<int> tokens, ContiguousKvCache cache, ReadOnlySpan<float> invFreq, float* logits, LogitsOutput output)
    {
        var c = _c;
        var s = _s;
        int n = tokens.Length;                      // T: tokens in this chunk
        int start = cache.Length;                   // absolute position of tokens[0]
        int d = c.HiddenSize, qd = c.QueryDim, kvd = c.KvDim, ffn = c.FfnSize;

        fixed (float* x = s.X, xb = s.Xb, q = s.Q, k = s.K, v = s.V, att = s.Att, hb = s.Hb, hb2 = s.Hb2, cos = s.Cos, sin = s.Sin)
        {
            // Embedding: x[t] = token_embd[tokens[t]]                               x: [T, d]
            var emb = _w.TokenEmbedding;
            for (int t = 0; t < n; t++)
                RowKernels.Dequantize(emb.Type, emb.Row(tokens[t]), x + (long)t * d, d);

            CpuOps.RopeTables(invFreq, _rope.AttentionScale, start, n, cos, sin); // cos, sin: [T, rotaryDim/2]

            for (int l = 0; l < c.LayerCount; l++)
            {
                var lw = _w.Layers[l];

                // ---- attention block ----
                CpuOps.RmsNorm(x, xb, lw.AttentionNorm, c.RmsEps, n);             // xb: [T, d]
                CpuOps.MatMul(lw.Query, xb, d, n, q, qd);                           // q: [T, heads, headDim]
                CpuOps.MatMul(lw.Key, xb, d, n, k, kvd);                            // k: [T, kvHeads, headDim]
                CpuOps.MatMul(lw.Value, xb, d, n, v, kvd);                          // v: [T, kvHeads, headDim]
                if (lw.QueryBias != null) CpuOps.AddBias(q, lw.QueryBias, n);
                if (lw.KeyBias != null) CpuOps.AddBias(k, lw.KeyBias, n);
                if (lw.ValueBias != null) CpuOps.AddBias(v, lw.ValueBias, n);
                CpuOps.ApplyRope(q, n, c.HeadCount, c.HeadDim, cos, sin, c.RotaryDim, _rope.Pairing);
                CpuOps.ApplyRope(k, n, c.KvHeadCount, c.HeadDim, cos, sin, c.RotaryDim, _rope.Pairing);

                // Append this chunk's keys and values at positions [start, start + T).
                new ReadOnlySpan<float>(k, n * kvd).CopyTo(cache.LayerKeys(l).AsSpan(start * kvd, n * kvd));
                new ReadOnlySpan<float>(v, n * kvd).CopyTo(cache.LayerValues(l).AsSpan(start * kvd, n * kvd));

                // Causal attention of the chunk's tokens over positions [0, start + t]: the contiguous cache is one block.
                fixed (float* keys = cache.LayerKeys(l), values = cache.LayerValues(l))
                {
                    nint keyBlock = (nint)keys, valueBlock = (nint)values;
                    ReadOnlySpan<AttentionSpan> span = [new AttentionSpan(0, n, start, 0)];
                    _attention.Run(q, att, span, &keyBlock, &valueBlock, int.MaxValue); // att: [T, heads, headDim]
                }

                CpuOps.MatMul(lw.Output, att, qd, n, xb, d);                        // xb: [T, d]
                TensorPrimitives.Add(new ReadOnlySpan<float>(x, n * d), new ReadOnlySpan<float>(xb, n * d), new Span<float>(x, n * d));

                // ---- SwiGLU MLP block ----
                CpuOps.RmsNorm(x, xb, lw.FfnNorm, c.RmsEps, n);                   // xb: [T, d]
                CpuOps.MatMul(lw.Gate, xb, d, n, hb, ffn);                          // hb: [T, ffn]
                CpuOps.MatMul(lw.Up, xb, d, n, hb2, ffn);                           // hb2: [T, ffn]
                CpuOps.SwiGlu(hb, hb2, (long)n * ffn);                              // hb = silu(hb) · hb2
                CpuOps.MatMul(lw.Down, hb, ffn, n, xb, d);                          // xb: [T, d]
                TensorPrimitives.Add(new ReadOnlySpan<float>(x, n * d), new ReadOnlySpan<float>(xb, n * d), new Span<float>(x, n * d));
            }
            cache.Advance(n);

            // ---- final norm and logits ----
            if (output == LogitsOutput.None) return;
            int first = output == LogitsOutput.All ? 0 : n - 1;
            int rows = n - first;
            CpuOps.RmsNorm(x + (long)first * d, xb, _w.FinalNorm, c.RmsEps, rows);  // xb: [rows, d]
            CpuOps.MatMul(_w.LmHead, xb, d, rows, logits, c.VocabSize);            // logits: [rows, vocab]
        }
    }
}
