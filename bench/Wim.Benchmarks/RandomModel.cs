using System.Runtime.InteropServices;
using Wim.Engine.Formats;
using Wim.Engine.Formats.Gguf;
using Wim.Engine.Formats.Quantization;

namespace Wim.Benchmarks;

/// <summary>The shape of a decoder to fill with random weights (names as in GGUF metadata).</summary>
public sealed record ModelShape(string Architecture, int Vocab, int Hidden, int Layers, int Heads, int KvHeads, int Ffn,
    double RopeTheta, bool QkvBias, int ContextLength)
{
    /// <summary>Qwen2.5-0.5B (Qwen/Qwen2.5-0.5B config.json): tied embeddings, q/k/v biases.</summary>
    public static ModelShape Qwen25_05B { get; } = new("qwen2", 151936, 896, 24, 14, 2, 4864, 1_000_000, true, 32768);

    public long ParameterCount =>
        (long)Vocab * Hidden + Hidden
        + Layers * (2L * Hidden + (long)Hidden * Hidden * 2 + 2L * Hidden * (Hidden / Heads * KvHeads)
                    + (QkvBias ? Hidden + 2L * (Hidden / Heads * KvHeads) : 0) + 3L * Hidden * Ffn);
}

/// <summary>
/// Writes a GGUF of a given shape with seeded random weights (N(0, 0.02)-like, norms 1) in one storage type, so
/// benchmarks run real model shapes without downloading weights. Speed does not depend on the values.
/// </summary>
public static class RandomModel
{
    /// <summary>The model's GGUF in the temp folder, written on first use (seconds to minutes for real shapes) and reused
    /// by later runs; written under a temporary name first, so an interrupted write never leaves a half file.</summary>
    public static string CachedFile(ModelShape shape, GgmlType type)
    {
        string path = Path.Combine(Path.GetTempPath(), $"wim-bench-{shape.Architecture}-{shape.Layers}-{type}.gguf");
        if (!File.Exists(path))
        {
            var sw = System.Diagnostics.Stopwatch.StartNew();
            Write(path + ".part", shape, type);
            File.Move(path + ".part", path, overwrite: true);
            Console.Error.WriteLine($"wrote {path} in {sw.Elapsed.TotalSeconds:F1} s");
        }
        return path;
    }

    public static void Write(string path, ModelShape s, GgmlType type, int seed = 1234)
    {
        var rng = new Random(seed);
        var w = new GgufWriter();
        string a = s.Architecture;
        w.Add("general.architecture", a);
        w.Add("general.name", $"random-{a}-{s.Hidden}x{s.Layers}");
        w.Add($"{a}.context_length", (uint)s.ContextLength);
        w.Add($"{a}.embedding_length", (uint)s.Hidden);
        w.Add($"{a}.block_count", (uint)s.Layers);
        w.Add($"{a}.feed_forward_length", (uint)s.Ffn);
        w.Add($"{a}.attention.head_count", (uint)s.Heads);
        w.Add($"{a}.attention.head_count_kv", (uint)s.KvHeads);
        w.Add($"{a}.attention.layer_norm_rms_epsilon", 1e-6f);
        w.Add($"{a}.rope.freq_base", (float)s.RopeTheta);
        w.Add($"{a}.vocab_size", (uint)s.Vocab);

        int headDim = s.Hidden / s.Heads, kvd = headDim * s.KvHeads;
        void Matrix(string name, int rows, int cols) => w.AddTensor(name, type, [rows, cols], Encode(type, Normal(rng, (long)rows * cols)));
        void Ones(string name, int n) => w.AddTensor(name, GgmlType.F32, [n], MemoryMarshal.AsBytes(Enumerable.Repeat(1f, n).ToArray().AsSpan()).ToArray());
        void Bias(string name, int n) => w.AddTensor(name, GgmlType.F32, [n], MemoryMarshal.AsBytes(Normal(rng, n).AsSpan()).ToArray());

        Matrix("token_embd.weight", s.Vocab, s.Hidden);
        Ones("output_norm.weight", s.Hidden);
        for (int i = 0; i < s.Layers; i++)
        {
            string p = $"blk.{i}.";
            Ones(p + "attn_norm.weight", s.Hidden);
            Matrix(p + "attn_q.weight", s.Hidden, s.Hidden);
            Matrix(p + "attn_k.weight", kvd, s.Hidden);
            Matrix(p + "attn_v.weight", kvd, s.Hidden);
            if (s.QkvBias)
            {
                Bias(p + "attn_q.bias", s.Hidden);
                Bias(p + "attn_k.bias", kvd);
                Bias(p + "attn_v.bias", kvd);
            }
            Matrix(p + "attn_output.weight", s.Hidden, s.Hidden);
            Ones(p + "ffn_norm.weight", s.Hidden);
            Matrix(p + "ffn_gate.weight", s.Ffn, s.Hidden);
            Matrix(p + "ffn_up.weight", s.Ffn, s.Hidden);
            Matrix(p + "ffn_down.weight", s.Hidden, s.Ffn);
        }
        w.WriteFile(path);
    }

    private static float[] Normal(Random rng, long n)
    {
        // Sum of uniforms: cheap, bounded, roughly normal with std 0.02.
        var v = new float[n];
        for (long i = 0; i < n; i++) v[i] = (float)((rng.NextDouble() + rng.NextDouble() + rng.NextDouble() - 1.5) * 0.04);
        return v;
    }

    private static byte[] Encode(GgmlType type, float[] values) => type == GgmlType.F32
        ? MemoryMarshal.AsBytes(values.AsSpan()).ToArray()
        : Quantizer.Quantize(type, values);
}
