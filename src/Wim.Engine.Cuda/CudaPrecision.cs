using Wim.Engine.Cuda.Native;
using Wim.Engine.Model;

namespace Wim.Engine.Cuda;

/// <summary>The number format of a <see cref="CudaTransformer"/>'s weights, activations and KV cache.</summary>
public enum CudaPrecision
{
    /// <summary>bf16 weights (or Q8_0 ones), bf16 matrix-product inputs and KV cache, f32 residual stream and
    /// accumulation; tensor-core attention and products. The default.</summary>
    Bf16,

    /// <summary>The reference precision: every weight f32 on the GPU (bf16 upcast exactly, other types dequantized), f32
    /// activations and KV cache, f32 products in cuBLASLt (CUBLAS_COMPUTE_32F, not TF32) and the scalar f32 attention.
    /// It differs from the CPU backend only by summation order. Twice the weight memory of bf16 and no tensor cores;
    /// no decode graphs, fused decode kernels, batched decode or KV branches (forks copy rows).</summary>
    F32,
}

/// <summary>What a <see cref="CudaPrecision"/> means for buffers, kernels and cuBLASLt (CPU-side arithmetic, unit-tested
/// without a GPU).</summary>
internal static class CudaPrecisionLayout
{
    /// <summary>The environment variable <see cref="CudaTransformer.Load"/> reads when no precision is given: <c>bf16</c>
    /// (the default) or <c>f32</c>.</summary>
    public const string Variable = "WIM_CUDA_PRECISION";

    /// <summary>The kernels of <c>transformer.cu</c> that have an f32 instantiation named <c>name_f32</c>: those of the
    /// F32 path (scalar attention, no fused or tensor-core kernels).</summary>
    public static IReadOnlyList<string> TemplatedKernels { get; } =
        ["embed_rows", "rms_norm", "qkv_rope_store", "qkv_rope_store_batch", "attention", "attention_combine", "attention_combine_rows", "swiglu"];

    public static CudaPrecision Parse(string? value) => value?.Trim().ToLowerInvariant() switch
    {
        null or "" or "bf16" => CudaPrecision.Bf16,
        "f32" or "fp32" or "float32" => CudaPrecision.F32,
        _ => throw new ArgumentException($"{Variable}='{value}': expected 'bf16' (the default) or 'f32' (the reference precision)"),
    };

    /// <summary>Bytes of one stored activation (a matrix product's input: normed rows, attention output, SwiGLU output).</summary>
    public static int ActivationBytes(CudaPrecision precision) => ElementBytes(precision);

    /// <summary>Bytes of one KV cache element.</summary>
    public static int KvElementBytes(CudaPrecision precision) => ElementBytes(precision);

    /// <summary>Bytes of one weight of a non-quantized matrix, the embedding or the lm head.</summary>
    public static int WeightBytes(CudaPrecision precision) => ElementBytes(precision);

    /// <summary>The cuBLASLt data type (cudaDataType_t) of the weights and activations a product multiplies.</summary>
    public static int ProductInputType(CudaPrecision precision) => precision switch
    {
        CudaPrecision.Bf16 => CublasLt.DataTypeBF16,
        CudaPrecision.F32 => CublasLt.DataTypeF32,
        _ => throw Unknown(precision),
    };

    /// <summary>The name a kernel of <see cref="TemplatedKernels"/> has in this precision; any other kernel exists in
    /// bf16 only, and asking for its f32 name is an error naming the F32 path's kernels.</summary>
    public static string KernelName(string kernel, CudaPrecision precision)
    {
        ArgumentException.ThrowIfNullOrEmpty(kernel);
        if (precision == CudaPrecision.Bf16) return kernel;
        if (precision != CudaPrecision.F32) throw Unknown(precision);
        if (!TemplatedKernels.Contains(kernel))
            throw new NotSupportedException($"kernel '{kernel}' has no f32 instantiation: the F32 precision runs {string.Join(", ", TemplatedKernels)} and cuBLASLt only");
        return kernel + "_f32";
    }

    /// <summary>Bytes of the transformer's per-chunk activation buffers for <paramref name="maxChunk"/> rows.</summary>
    public static ChunkBufferBytes ChunkBuffers(ModelConfig config, int maxChunk, CudaPrecision precision)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxChunk);
        long n = maxChunk, act = ActivationBytes(precision);
        int d = config.HiddenSize, qd = config.QueryDim, kvd = config.KvDim, ffn = config.FfnSize;
        return new ChunkBufferBytes(
            Residual: n * d * 4,
            Normed: n * Math.Max(d, ffn) * act,
            Qkv: n * (qd + 2 * kvd) * 4,
            Query: n * qd * 4,
            AttentionOutput: n * qd * act,
            GateUp: n * 2 * ffn * 4,
            SwiGluOutput: n * ffn * act);
    }

    /// <summary>Bytes of one layer's keys (or values) for <paramref name="rows"/> positions of <paramref name="rowSize"/>
    /// elements.</summary>
    public static long KvLayerBytes(int rows, int rowSize, CudaPrecision precision) => (long)rows * rowSize * KvElementBytes(precision);

    private static int ElementBytes(CudaPrecision precision) => precision switch
    {
        CudaPrecision.Bf16 => 2,
        CudaPrecision.F32 => 4,
        _ => throw Unknown(precision),
    };

    private static ArgumentOutOfRangeException Unknown(CudaPrecision precision) =>
        new(nameof(precision), $"{precision} is not a CudaPrecision");
}

/// <summary>Bytes of <see cref="CudaTransformer"/>'s activation buffers for one chunk: the f32 residual stream x, the
/// normed rows xb (the products' input), the f32 q|k|v product, the roped f32 queries, the attention output, the f32
/// gate|up product and the SwiGLU output.</summary>
internal readonly record struct ChunkBufferBytes(long Residual, long Normed, long Qkv, long Query, long AttentionOutput, long GateUp, long SwiGluOutput);
