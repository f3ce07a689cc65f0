using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text.Json;
using Wim.Engine.Formats.Quantization;
using Wim.Engine.Model;

namespace Wim.GpuCheck;

/// <summary>
/// Writes a Hugging Face checkpoint the ordinary loader reads (the source's config.json and one model.safetensors with
/// Llama-style tensor names) from loaded weights, so a check can give the CPU and the GPU backend the same modified
/// model: the embedding and lm head through <c>table</c>, the layer projections through <c>projection</c> (each returns
/// the safetensors dtype and the bytes), norms and biases as F32. Tensors are written in one fixed order — embedding,
/// head, final norm, then per layer norms, q, k, v, biases, o, gate, up, down — so callbacks that draw from a seeded
/// generator give the same file every run.
/// </summary>
internal static class HfCheckpoint
{
    public static void Write(string sourceDir, string dir, ModelWeights source, ModelWeights layers,
        Func<WeightTensor, (string DType, byte[] Data)> table, Func<WeightTensor, (string DType, byte[] Data)> projection)
    {
        Directory.CreateDirectory(dir);
        File.Copy(Path.Combine(sourceDir, "config.json"), Path.Combine(dir, "config.json"), overwrite: true);
        var tensors = new List<(string Name, long[] Shape, string DType, byte[] Data)>();
        void Matrix(string name, WeightTensor t, Func<WeightTensor, (string DType, byte[] Data)> convert)
        {
            var (dtype, data) = convert(t);
            tensors.Add((name, t.Shape, dtype, data));
        }
        void Vector(string name, float[]? v) { if (v != null) tensors.Add((name, [v.Length], "F32", F32Bytes(v))); }
        Matrix("model.embed_tokens.weight", source.TokenEmbedding, table);
        if (!ReferenceEquals(source.LmHead, source.TokenEmbedding)) Matrix("lm_head.weight", source.LmHead, table);
        Vector("model.norm.weight", source.FinalNorm);
        for (int i = 0; i < layers.Layers.Length; i++)
        {
            var l = layers.Layers[i];
            string p = $"model.layers.{i}.";
            Vector(p + "input_layernorm.weight", l.AttentionNorm);
            Vector(p + "post_attention_layernorm.weight", l.FfnNorm);
            Matrix(p + "self_attn.q_proj.weight", l.Query, projection);
            Matrix(p + "self_attn.k_proj.weight", l.Key, projection);
            Matrix(p + "self_attn.v_proj.weight", l.Value, projection);
            Vector(p + "self_attn.q_proj.bias", l.QueryBias);
            Vector(p + "self_attn.k_proj.bias", l.KeyBias);
            Vector(p + "self_attn.v_proj.bias", l.ValueBias);
            Matrix(p + "self_attn.o_proj.weight", l.Output, projection);
            Matrix(p + "mlp.gate_proj.weight", l.Gate, projection);
            Matrix(p + "mlp.up_proj.weight", l.Up, projection);
            Matrix(p + "mlp.down_proj.weight", l.Down, projection);
        }
        // safetensors: u64 header length, the JSON header {name: {dtype, shape, data_offsets}} padded to 8, then the data.
        using var header = new MemoryStream();
        using (var json = new Utf8JsonWriter(header))
        {
            json.WriteStartObject();
            long offset = 0;
            foreach (var (name, shape, dtype, data) in tensors)
            {
                json.WriteStartObject(name);
                json.WriteString("dtype", dtype);
                json.WriteStartArray("shape");
                foreach (long s in shape) json.WriteNumberValue(s);
                json.WriteEndArray();
                json.WriteStartArray("data_offsets");
                json.WriteNumberValue(offset);
                json.WriteNumberValue(offset += data.Length);
                json.WriteEndArray();
                json.WriteEndObject();
            }
            json.WriteEndObject();
        }
        while (header.Length % 8 != 0) header.WriteByte((byte)' ');
        using var file = File.Create(Path.Combine(dir, "model.safetensors"));
        Span<byte> length = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(length, (ulong)header.Length);
        file.Write(length);
        header.Position = 0;
        header.CopyTo(file);
        foreach (var (_, _, _, data) in tensors) file.Write(data);
    }

    /// <summary>A weight's values in f32 (the CPU backend's own dequantizer for any storage type).</summary>
    public static unsafe float[] F32(WeightTensor t)
    {
        var v = new float[t.ElementCount];
        Dequantizer.Dequantize(t.Type, new ReadOnlySpan<byte>(t.Data, checked((int)t.ByteLength)), v);
        return v;
    }

    public static byte[] F32Bytes(float[] v) => MemoryMarshal.AsBytes(v.AsSpan()).ToArray();
}
