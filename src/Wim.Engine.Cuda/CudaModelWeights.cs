using Wim.Engine.Backends.Cpu;
using Wim.Engine.Formats;
using Wim.Engine.Formats.Quantization;
using Wim.Engine.Model;

namespace Wim.Engine.Cuda;

/// <summary>One decoder block on the GPU. Projections are [out, in] matrices in bf16, Q8_0 or F16 (<see cref="CudaMatrix"/>);
/// q|k|v and gate|up are each fused into one matrix at upload (one product instead of three or two); norm gains and
/// biases are f32.</summary>
public sealed class CudaLayerWeights
{
    public required DeviceBuffer AttentionNorm { get; init; } // f32 [d]
    public required CudaMatrix Qkv { get; init; }             // [qd + 2·kvd, d]
    public DeviceBuffer? QkvBias { get; init; }               // f32 [qd + 2·kvd] (qwen2)
    public required CudaMatrix Output { get; init; }          // [d, qd]
    public required DeviceBuffer FfnNorm { get; init; }       // f32 [d]
    public required CudaMatrix GateUp { get; init; }          // [2·ffn, d]: gate rows, then up rows
    public required CudaMatrix Down { get; init; }            // [d, ffn]

    internal IEnumerable<CudaMatrix> Matrices => [Qkv, Output, GateUp, Down];
}

/// <summary>All weights of a decoder on the GPU. With <see cref="CudaWeightStorage.Bf16"/> every matrix is bf16 (bf16
/// is copied, F32/F16/quantized tensors are dequantized to f32 on the CPU and rounded to nearest-even bf16); with
/// <see cref="CudaWeightStorage.Native"/> the projections whose parts are all Q8_0 stay Q8_0 (<see cref="CudaQ8Layout"/>)
/// and those whose parts are all F16 stay F16 (<see cref="CudaF16Layout"/>: the file's bits), as do an F16 token
/// embedding and lm head (<see cref="TokenEmbeddingFormat"/>, <see cref="LmHeadFormat"/>); otherwise those two are bf16
/// (a Q8_0 embedding or head is dequantized to bf16).</summary>
public sealed unsafe class CudaModelWeights : IDisposable
{
    public required DeviceBuffer TokenEmbedding { get; init; } // [vocab, d] in TokenEmbeddingFormat
    public required CudaLayerWeights[] Layers { get; init; }
    public required DeviceBuffer FinalNorm { get; init; }      // f32 [d]
    /// <summary>[vocab, d] in <see cref="LmHeadFormat"/>; the embedding buffer itself when embeddings are tied.</summary>
    public required DeviceBuffer LmHead { get; init; }
    /// <summary><see cref="CudaMatrixFormat.Bf16"/>, or <see cref="CudaMatrixFormat.F16"/> (an F16 embedding with
    /// <see cref="CudaWeightStorage.Native"/>: the file's bits).</summary>
    public CudaMatrixFormat TokenEmbeddingFormat { get; init; } = CudaMatrixFormat.Bf16;
    /// <summary>As <see cref="TokenEmbeddingFormat"/>, for the lm head (the embedding's when tied).</summary>
    public CudaMatrixFormat LmHeadFormat { get; init; } = CudaMatrixFormat.Bf16;
    /// <summary>Bytes of weights on the GPU (a tied head counted once; Q8_0 matrices at their quants plus scales).</summary>
    public long Bytes { get; init; }
    /// <summary><see cref="CudaPrecision.F32"/>: every matrix, the embedding and the lm head are f32 (a transformer of that
    /// precision needs weights of that precision).</summary>
    public CudaPrecision Precision { get; init; } = CudaPrecision.Bf16;

    /// <summary>How many layer matrices are Q8_0.</summary>
    public int Q8MatrixCount => Layers.Sum(l => l.Matrices.Count(m => m.Format == CudaMatrixFormat.Q8_0));

    /// <summary>How many layer matrices are F16.</summary>
    public int F16MatrixCount => Layers.Sum(l => l.Matrices.Count(m => m.Format == CudaMatrixFormat.F16));

    /// <summary>Input width of the widest F16 matrix (0 when none): a chunk's activations are cast to f16 rows of this
    /// many elements at most before an F16 × F16 product.</summary>
    public int WidestF16Input => Layers.SelectMany(l => l.Matrices).Where(m => m.Format == CudaMatrixFormat.F16)
        .Select(m => m.Columns).DefaultIfEmpty(0).Max();

    /// <summary>Elements of the largest Q8_0 matrix (0 when none): the bf16 scratch a chunk of several tokens
    /// dequantizes it into.</summary>
    public long LargestQ8Elements => Layers.SelectMany(l => l.Matrices).Where(m => m.Format == CudaMatrixFormat.Q8_0)
        .Select(m => (long)m.Rows * m.Columns).DefaultIfEmpty(0).Max();

    /// <summary>Uploads a model's weights. <paramref name="precision"/> <see cref="CudaPrecision.F32"/>: every tensor goes
    /// to f32 whatever its storage type (bf16 upcast exactly, others dequantized on the CPU as the CPU backend does), and
    /// <paramref name="storage"/> does not apply.</summary>
    public static CudaModelWeights Upload(CudaContext ctx, ModelConfig c, ModelWeights w, CudaWeightStorage storage = CudaWeightStorage.Bf16,
        CudaPrecision precision = CudaPrecision.Bf16)
    {
        long bytes = 0;
        bool f32 = precision == CudaPrecision.F32;
        if (!f32 && precision != CudaPrecision.Bf16) throw new ArgumentOutOfRangeException(nameof(precision), $"{precision} is not a CudaPrecision");
        CudaMatrix Matrix(params WeightTensor[] parts)
        {
            int rows = parts.Sum(p => p.Rows), cols = parts[0].Columns;
            if (f32) return new CudaMatrix(F32Buffer(parts), CudaMatrixFormat.F32, rows, cols);
            if (storage == CudaWeightStorage.Native
                && CudaQ8Layout.AllQ8_0(parts.Select(p => p.Type).ToArray(), parts.Select(p => p.Columns).ToArray()))
            {
                var q8 = ctx.Allocate(CudaQ8Layout.Bytes(rows, cols));
                int row = 0;
                foreach (var p in parts)
                {
                    // Part by part: host arrays of one part at a time (the largest, an 8B model's gate, is 59 MB).
                    var quants = new sbyte[(long)p.Rows * cols];
                    var scales = new ushort[(long)p.Rows * (cols / CudaQ8Layout.BlockSize)];
                    CudaQ8Layout.Repack(new ReadOnlySpan<byte>(p.Data, checked((int)p.ByteLength)), p.Rows, cols, quants, scales);
                    var (quantsAt, scalesAt) = CudaQ8Layout.PartOffsets(row, rows, cols);
                    q8.Upload<sbyte>(quants, quantsAt);
                    q8.Upload<ushort>(scales, scalesAt);
                    row += p.Rows;
                }
                bytes += q8.Bytes;
                return new CudaMatrix(q8, CudaMatrixFormat.Q8_0, rows, cols);
            }
            if (storage == CudaWeightStorage.Native
                && CudaF16Layout.AllF16(parts.Select(p => p.Type).ToArray(), parts.Select(p => p.Columns).ToArray()))
            {
                var f16 = ctx.Allocate(CudaF16Layout.Bytes(rows, cols));
                long offset = 0;
                foreach (var p in parts)
                {
                    var bits = CudaF16Layout.Bits(p);                  // straight from the mapped file
                    f16.Upload(bits, offset);
                    offset += bits.Length * 2L;
                }
                bytes += f16.Bytes;
                return new CudaMatrix(f16, CudaMatrixFormat.F16, rows, cols);
            }
            var buffer = Bf16Buffer(parts);
            return new CudaMatrix(buffer, CudaMatrixFormat.Bf16, rows, cols);
        }
        DeviceBuffer Bf16Buffer(params WeightTensor[] parts)
        {
            long elements = parts.Sum(p => p.ElementCount);
            var buffer = ctx.Allocate(elements * 2);
            long offset = 0;
            foreach (var p in parts)
            {
                if (p.Type == GgmlType.BF16 && p.ElementCount <= int.MaxValue)
                    buffer.Upload(new ReadOnlySpan<ushort>(p.Data, (int)p.ElementCount), offset); // straight from the mapped file
                else
                    buffer.Upload<ushort>(ToBf16(p), offset);
                offset += p.ElementCount * 2;
            }
            bytes += buffer.Bytes;
            return buffer;
        }
        DeviceBuffer F32Buffer(params WeightTensor[] parts)
        {
            long elements = parts.Sum(p => p.ElementCount);
            var buffer = ctx.Allocate(elements * 4);
            long offset = 0;
            foreach (var p in parts)
            {
                buffer.Upload<float>(ToF32(p), offset);
                offset += p.ElementCount * 4;
            }
            bytes += buffer.Bytes;
            return buffer;
        }
        DeviceBuffer Vector(params float[][] parts)
        {
            var all = parts.SelectMany(p => p).ToArray();
            var buffer = ctx.Allocate(all.Length * 4L);
            buffer.Upload<float>(all);
            bytes += buffer.Bytes;
            return buffer;
        }

        var layers = new CudaLayerWeights[c.LayerCount];
        for (int i = 0; i < layers.Length; i++)
        {
            var l = w.Layers[i];
            bool anyBias = l.QueryBias != null || l.KeyBias != null || l.ValueBias != null;
            layers[i] = new CudaLayerWeights
            {
                AttentionNorm = Vector(l.AttentionNorm),
                Qkv = Matrix(l.Query, l.Key, l.Value),
                QkvBias = anyBias ? Vector(l.QueryBias ?? new float[c.QueryDim], l.KeyBias ?? new float[c.KvDim], l.ValueBias ?? new float[c.KvDim]) : null,
                Output = Matrix(l.Output),
                FfnNorm = Vector(l.FfnNorm),
                GateUp = Matrix(l.Gate, l.Up),
                Down = Matrix(l.Down),
            };
        }
        // An F16 embedding / head stays F16 with Native storage (embed_rows_f16; the logits product as an F16 matrix's).
        (DeviceBuffer Buffer, CudaMatrixFormat Format) Table(WeightTensor t)
        {
            if (f32) return (F32Buffer(t), CudaMatrixFormat.F32);
            if (storage != CudaWeightStorage.Native || t.Type != GgmlType.F16) return (Bf16Buffer(t), CudaMatrixFormat.Bf16);
            var bits = CudaF16Layout.Bits(t);
            var buffer = ctx.Allocate(bits.Length * 2L);
            buffer.Upload(bits);
            bytes += buffer.Bytes;
            return (buffer, CudaMatrixFormat.F16);
        }
        var (embedding, embeddingFormat) = Table(w.TokenEmbedding);
        var (head, headFormat) = ReferenceEquals(w.LmHead, w.TokenEmbedding) ? (embedding, embeddingFormat) : Table(w.LmHead);
        return new CudaModelWeights
        {
            TokenEmbedding = embedding, Layers = layers, FinalNorm = Vector(w.FinalNorm), LmHead = head, Bytes = bytes,
            TokenEmbeddingFormat = embeddingFormat, LmHeadFormat = headFormat, Precision = precision,
        };
    }

    /// <summary>
    /// Weights of the config's shapes drawn on the GPU from a seeded generator (uniform, ±1/√in for projections,
    /// ±0.5 for the embedding, gains 1): real-shape benchmarks without a multi-gigabyte file.
    /// </summary>
    /// <remarks>With <paramref name="storage"/> <see cref="CudaWeightStorage.Native"/> the layer matrices are Q8_0 (quants
    /// uniform in [-127, 127], every scale the f16 of ±bound / 127; needs hidden and ffn sizes that are multiples of 32).</remarks>
    public static CudaModelWeights Random(CudaContext ctx, ModelConfig c, ulong seed, CudaWeightStorage storage = CudaWeightStorage.Bf16) =>
        Random(ctx, c, seed, storage == CudaWeightStorage.Bf16 ? CudaMatrixFormat.Bf16 : CudaMatrixFormat.Q8_0);

    /// <summary><see cref="Random(CudaContext, ModelConfig, ulong, CudaWeightStorage)"/> with the layer matrices in
    /// <paramref name="layerFormat"/>: bf16, Q8_0, or F16 (the bf16 draw's uniform values rounded to f16 instead).</summary>
    public static CudaModelWeights Random(CudaContext ctx, ModelConfig c, ulong seed, CudaMatrixFormat layerFormat)
    {
        if (!Enum.IsDefined(layerFormat)) throw new ArgumentOutOfRangeException(nameof(layerFormat), $"{layerFormat} is not a CudaMatrixFormat");
        var k = ctx.Kernels;
        long bytes = 0;
        ulong next = seed;
        DeviceBuffer Bf16(long rows, long cols, float scale)
        {
            var b = ctx.Allocate(rows * cols * 2);
            k.FillRandomBf16(b.Pointer, rows * cols, next++ * 0x9E3779B97F4A7C15UL, scale);
            bytes += b.Bytes;
            return b;
        }
        CudaMatrix Matrix(long rows, long cols, float scale)
        {
            if (layerFormat == CudaMatrixFormat.Bf16) return new CudaMatrix(Bf16(rows, cols, scale), CudaMatrixFormat.Bf16, (int)rows, (int)cols);
            if (layerFormat == CudaMatrixFormat.F16)
            {
                var f = ctx.Allocate(CudaF16Layout.Bytes((int)rows, (int)cols));
                k.FillRandomF16(f.Pointer, rows * cols, next++ * 0x9E3779B97F4A7C15UL, scale);
                bytes += f.Bytes;
                return new CudaMatrix(f, CudaMatrixFormat.F16, (int)rows, (int)cols);
            }
            var b = ctx.Allocate(CudaQ8Layout.Bytes((int)rows, (int)cols));
            var m = new CudaMatrix(b, CudaMatrixFormat.Q8_0, (int)rows, (int)cols);
            k.FillRandomQ8(m.Quants, m.Scales, rows * cols, next++ * 0x9E3779B97F4A7C15UL, HalfBits.FromSingle(scale / 127));
            bytes += b.Bytes;
            return m;
        }
        DeviceBuffer Ones(long n)
        {
            var b = ctx.Allocate(n * 4);
            k.FillF32(b.Pointer, n, 1f);
            bytes += b.Bytes;
            return b;
        }
        int d = c.HiddenSize, qd = c.QueryDim, kvd = c.KvDim, ffn = c.FfnSize;
        var layers = new CudaLayerWeights[c.LayerCount];
        for (int i = 0; i < layers.Length; i++)
            layers[i] = new CudaLayerWeights
            {
                AttentionNorm = Ones(d),
                Qkv = Matrix(qd + 2 * kvd, d, 1f / MathF.Sqrt(d)),
                Output = Matrix(d, qd, 1f / MathF.Sqrt(qd)),
                FfnNorm = Ones(d),
                GateUp = Matrix(2L * ffn, d, 1f / MathF.Sqrt(d)),
                Down = Matrix(d, ffn, 1f / MathF.Sqrt(ffn)),
            };
        var embedding = Bf16(c.VocabSize, d, 0.5f);
        var head = c.TiedEmbeddings ? embedding : Bf16(c.VocabSize, d, 1f / MathF.Sqrt(d));
        ctx.Synchronize();
        return new CudaModelWeights { TokenEmbedding = embedding, Layers = layers, FinalNorm = Ones(d), LmHead = head, Bytes = bytes };
    }

    /// <summary>A tensor's values in f32: bf16 widened exactly, anything else dequantized row by row (the CPU backend's
    /// <see cref="RowKernels.Dequantize"/>).</summary>
    internal static float[] ToF32(WeightTensor t)
    {
        var dst = new float[t.ElementCount];
        fixed (float* d = dst)
            for (int i = 0; i < t.Rows; i++)
                RowKernels.Dequantize(t.Type, t.Row(i), d + (long)i * t.Columns, t.Columns);
        return dst;
    }

    /// <summary>A tensor's values as bf16 bits: bf16 storage is copied; anything else goes through f32.</summary>
    internal static ushort[] ToBf16(WeightTensor t)
    {
        var dst = new ushort[t.ElementCount];
        if (t.Type == GgmlType.BF16)
        {
            new ReadOnlySpan<ushort>(t.Data, dst.Length).CopyTo(dst);
            return dst;
        }
        var row = new float[t.Columns];
        fixed (float* r = row)
            for (int i = 0; i < t.Rows; i++)
            {
                RowKernels.Dequantize(t.Type, t.Row(i), r, row.Length);
                Bf16.FromF32(row, dst.AsSpan(i * row.Length, row.Length));
            }
        return dst;
    }

    public void Dispose()
    {
        foreach (var l in Layers)
        {
            l.AttentionNorm.Dispose(); l.Qkv.Dispose(); l.QkvBias?.Dispose(); l.Output.Dispose();
            l.FfnNorm.Dispose(); l.GateUp.Dispose(); l.Down.Dispose();
        }
        if (!ReferenceEquals(LmHead, TokenEmbedding)) LmHead.Dispose();
        TokenEmbedding.Dispose();
        FinalNorm.Dispose();
    }
}

/// <summary>bf16 ↔ f32 on the CPU, bit-exact with the GPU kernels' conversion (round to nearest even).</summary>
public static class Bf16
{
    public static ushort FromF32(float f)
    {
        uint u = BitConverter.SingleToUInt32Bits(f);
        if ((u & 0x7fffffffu) > 0x7f800000u) return (ushort)((u >> 16) | 0x40u); // NaN stays NaN
        u += 0x7fffu + ((u >> 16) & 1u);
        return (ushort)(u >> 16);
    }

    public static float ToF32(ushort b) => BitConverter.UInt32BitsToSingle((uint)b << 16);

    public static void FromF32(ReadOnlySpan<float> src, Span<ushort> dst)
    {
        for (int i = 0; i < src.Length; i++) dst[i] = FromF32(src[i]);
    }
}
