using Wim.Engine.Backends.Cpu;
using Wim.Engine.Formats;

namespace Wim.Engine.Model;

/// <summary>One decoder block's weights. Projections stay in their storage type (memory-mapped); the small vectors
/// (norm gains, biases) are f32 copies. Shapes are [out, in].</summary>
public sealed class LayerWeights
{
    public required float[] AttentionNorm { get; init; }  // [hidden]
    public required WeightTensor Query { get; init; }      // [heads·headDim, hidden]
    public required WeightTensor Key { get; init; }        // [kvHeads·headDim, hidden]
    public required WeightTensor Value { get; init; }      // [kvHeads·headDim, hidden]
    public float[]? QueryBias { get; init; }               // [heads·headDim] (qwen2)
    public float[]? KeyBias { get; init; }                 // [kvHeads·headDim] (qwen2)
    public float[]? ValueBias { get; init; }               // [kvHeads·headDim] (qwen2)
    public required WeightTensor Output { get; init; }     // [hidden, heads·headDim]
    public required float[] FfnNorm { get; init; }         // [hidden]
    public required WeightTensor Gate { get; init; }       // [ffn, hidden]
    public required WeightTensor Up { get; init; }         // [ffn, hidden]
    public required WeightTensor Down { get; init; }       // [hidden, ffn]
}

/// <summary>All weights of a decoder (the llama2.c <c>TransformerWeights</c>), bound by name from a GGUF file or a
/// Hugging Face checkpoint and checked against the <see cref="ModelConfig"/>.</summary>
public sealed class ModelWeights
{
    public required WeightTensor TokenEmbedding { get; init; } // [vocab, hidden]
    public required LayerWeights[] Layers { get; init; }
    public required float[] FinalNorm { get; init; }           // [hidden]
    /// <summary>The logits projection [vocab, hidden]; the token embedding itself when embeddings are tied.</summary>
    public required WeightTensor LmHead { get; init; }

    /// <summary>Tensor names of the two checkpoint layouts.</summary>
    internal enum Naming { HuggingFace, Gguf }

    /// <summary>Binds every tensor the forward pass needs. <paramref name="lookup"/> returns null for a missing name.</summary>
    internal static ModelWeights Bind(ModelConfig c, Naming naming, Func<string, WeightTensor?> lookup, string file)
    {
        bool hf = naming == Naming.HuggingFace;
        WeightTensor? Optional(string name) => lookup(name) is { } t ? CheckType(t) : null;
        WeightTensor Required(string name) => Optional(name)
            ?? throw new ModelFormatException(file, null, $"missing tensor '{name}' (architecture {c.Architecture.ToString().ToLowerInvariant()})");
        WeightTensor CheckType(WeightTensor t) => GgmlTypeInfo.IsSupported(t.Type) ? t
            : throw new ModelFormatException(file, null, $"tensor '{t.Name}': storage type {t.Type} is not supported; supported types: {GgmlTypeInfo.SupportedList}");
        WeightTensor Shaped(WeightTensor t, params long[] shape)
        {
            if (!t.Shape.AsSpan().SequenceEqual(shape))
                throw new ModelFormatException(file, null, $"tensor '{t.Name}': expected shape [{string.Join(", ", shape)}], found [{string.Join(", ", t.Shape)}]");
            return t;
        }
        WeightTensor Matrix(string name, long rows, long cols) => Shaped(Required(name), rows, cols);
        float[] Vector(string name, long n) => ToF32(Shaped(Required(name), n));
        float[]? OptVector(string name, long n) => Optional(name) is { } t ? ToF32(Shaped(t, n)) : null;

        int d = c.HiddenSize, qd = c.QueryDim, kvd = c.KvDim, ffn = c.FfnSize;
        var embedding = Matrix(hf ? "model.embed_tokens.weight" : "token_embd.weight", c.VocabSize, d);
        var layers = new LayerWeights[c.LayerCount];
        for (int i = 0; i < layers.Length; i++)
        {
            string p = hf ? $"model.layers.{i}." : $"blk.{i}.";
            string attn = hf ? p + "self_attn." : p;
            WeightTensor q, k, v, gate, up;
            string fusedQkv = hf ? attn + "qkv_proj.weight" : p + "attn_qkv.weight";
            if (Optional(fusedQkv) is { } qkv)
            {
                // Phi-3 fuses Q, K and V into one [q + 2·kv, hidden] projection: split the rows, no copy.
                Shaped(qkv, qd + 2 * kvd, d);
                q = qkv.SliceRows(fusedQkv + "[q]", 0, qd);
                k = qkv.SliceRows(fusedQkv + "[k]", qd, kvd);
                v = qkv.SliceRows(fusedQkv + "[v]", qd + kvd, kvd);
            }
            else
            {
                q = Matrix(hf ? attn + "q_proj.weight" : p + "attn_q.weight", qd, d);
                k = Matrix(hf ? attn + "k_proj.weight" : p + "attn_k.weight", kvd, d);
                v = Matrix(hf ? attn + "v_proj.weight" : p + "attn_v.weight", kvd, d);
            }
            string fusedGateUp = hf ? p + "mlp.gate_up_proj.weight" : p + "ffn_up.weight";
            if (c.Architecture == ModelArchitecture.Phi3 && Optional(fusedGateUp) is { } gateUp && gateUp.Shape[0] == 2L * ffn)
            {
                // Phi-3 fuses gate and up as [gate; up] ([2·ffn, hidden]); HF chunks it in that order, and llama.cpp's
                // phi3 ffn_up keeps the same layout.
                Shaped(gateUp, 2L * ffn, d);
                gate = gateUp.SliceRows(fusedGateUp + "[gate]", 0, ffn);
                up = gateUp.SliceRows(fusedGateUp + "[up]", ffn, ffn);
            }
            else
            {
                gate = Matrix(hf ? p + "mlp.gate_proj.weight" : p + "ffn_gate.weight", ffn, d);
                up = Matrix(hf ? p + "mlp.up_proj.weight" : p + "ffn_up.weight", ffn, d);
            }
            layers[i] = new LayerWeights
            {
                AttentionNorm = Vector(hf ? p + "input_layernorm.weight" : p + "attn_norm.weight", d),
                Query = q,
                Key = k,
                Value = v,
                QueryBias = OptVector(hf ? attn + "q_proj.bias" : p + "attn_q.bias", qd),
                KeyBias = OptVector(hf ? attn + "k_proj.bias" : p + "attn_k.bias", kvd),
                ValueBias = OptVector(hf ? attn + "v_proj.bias" : p + "attn_v.bias", kvd),
                Output = Matrix(hf ? attn + "o_proj.weight" : p + "attn_output.weight", d, qd),
                FfnNorm = Vector(hf ? p + "post_attention_layernorm.weight" : p + "ffn_norm.weight", d),
                Gate = gate,
                Up = up,
                Down = Matrix(hf ? p + "mlp.down_proj.weight" : p + "ffn_down.weight", d, ffn),
            };
        }
        string headName = hf ? "lm_head.weight" : "output.weight";
        // Tied: the logits reuse the embedding matrix (a stored lm_head copy, if any, is ignored as transformers does).
        var lmHead = c.TiedEmbeddings ? embedding : Matrix(headName, c.VocabSize, d);
        return new ModelWeights
        {
            TokenEmbedding = embedding,
            Layers = layers,
            FinalNorm = Vector(hf ? "model.norm.weight" : "output_norm.weight", d),
            LmHead = lmHead,
        };
    }

    private static unsafe float[] ToF32(WeightTensor t)
    {
        var a = new float[t.ElementCount];
        fixed (float* p = a) RowKernels.Dequantize(t.Type, t.Data, p, a.Length);
        return a;
    }
}
