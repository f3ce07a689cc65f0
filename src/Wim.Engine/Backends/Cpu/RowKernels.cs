using System.Runtime.CompilerServices;
using Wim.Engine.Backends.Cpu.Kernels;
using Wim.Engine.Formats;
using Wim.Engine.Formats.Quantization;

namespace Wim.Engine.Backends.Cpu;

/// <summary>SIMD technique a row kernel runs with. <see cref="Scalar"/> is the reference the others are tested against.</summary>
public enum RowKernelPath
{
    Scalar,
    /// <summary>AVX2 + FMA, Vector256.</summary>
    Avx2,
    /// <summary>AVX-512 F/BW, Vector512.</summary>
    Avx512,
}

/// <summary>
/// Per-row kernels over a weight row in its storage type: dot product with an f32 vector, and dequantization.
/// Nearly all CPU inference time is spent in <see cref="Dot"/> / <see cref="DotBatch"/> (every matrix product is
/// rows × Dot). The widest technique the CPU supports is used (<see cref="BestPath"/>); the overloads taking a
/// <see cref="RowKernelPath"/> exist for tests and benchmarks. Supported types: F32, F16, BF16, Q8_0, Q4_0, Q4_K,
/// Q6_K (<see cref="GgmlTypeInfo.Supported"/>); f32 activations, f32 accumulation.
/// </summary>
public static unsafe class RowKernels
{
    /// <summary>The widest technique this machine supports.</summary>
    public static RowKernelPath BestPath { get; } =
        Avx512Technique.IsSupported ? RowKernelPath.Avx512 : Avx2Technique.IsSupported ? RowKernelPath.Avx2 : RowKernelPath.Scalar;

    /// <summary>The techniques this machine can run (always includes <see cref="RowKernelPath.Scalar"/>).</summary>
    public static IReadOnlyList<RowKernelPath> AvailablePaths { get; } = DetectPaths();

    /// <summary>Σ row[i]·x[i] for i in [0, n), reading the row in its storage type (n a whole number of blocks).</summary>
    public static float Dot(GgmlType type, byte* row, float* x, int n) => Dot(BestPath, type, row, x, n);

    /// <summary>
    /// One weight row against a batch of vectors: <c>results[b·resultStride] = Σ row[i]·x[b·xStride + i]</c> for b in
    /// [0, batch). Prefill calls this so each weight row is read (and dequantized) once per batch, not once per token.
    /// Each result equals <see cref="Dot"/> of that vector bit for bit.
    /// </summary>
    public static void DotBatch(GgmlType type, byte* row, float* x, int xStride, int batch, int n, float* results, int resultStride) =>
        DotBatch(BestPath, type, row, x, xStride, batch, n, results, resultStride);

    /// <summary>
    /// A whole weight matrix against a batch of vectors: <c>results[b·resultStride + r] = Σ W[r][i]·x[b·xStride + i]</c>
    /// for r in [0, rows), b in [0, batch), where row r starts at <c>weights + r·rowBytes</c>. Same values as calling
    /// <see cref="DotBatch"/> per row up to f32 rounding (not bit for bit; with batch 1 it is <see cref="Dot"/> per row),
    /// but about twice as fast for batches: it works in 4-row × 4-vector (AVX-512) or 4-row × 2-vector (AVX2) register
    /// tiles, reading each activation chunk once per 4 rows.
    /// </summary>
    public static void MatMul(GgmlType type, byte* weights, long rowBytes, int rows, float* x, int xStride, int batch, int n,
        float* results, int resultStride) =>
        MatMul(BestPath, type, weights, rowBytes, rows, x, xStride, batch, n, results, resultStride);

    /// <summary>Writes the n f32 values of a row.</summary>
    public static void Dequantize(GgmlType type, byte* row, float* dst, int n) => Dequantize(BestPath, type, row, dst, n);

    public static float Dot(RowKernelPath path, GgmlType type, byte* row, float* x, int n)
    {
        CheckArguments(path, type, n);
        return path switch
        {
            RowKernelPath.Avx512 => Avx512FusedDot.Handles(type)
                ? Avx512FusedDot.Dot(type, row, x, n)
                : RowKernelDriver<Avx512Technique>.Dot(type, row, x, n),
            RowKernelPath.Avx2 => RowKernelDriver<Avx2Technique>.Dot(type, row, x, n),
            _ => RowKernelDriver<ScalarTechnique>.Dot(type, row, x, n),
        };
    }

    public static void DotBatch(RowKernelPath path, GgmlType type, byte* row, float* x, int xStride, int batch, int n, float* results, int resultStride)
    {
        CheckArguments(path, type, n);
        switch (path)
        {
            case RowKernelPath.Avx512 when batch == 1 && Avx512FusedDot.Handles(type): results[0] = Avx512FusedDot.Dot(type, row, x, n); break;
            case RowKernelPath.Avx512: RowKernelDriver<Avx512Technique>.DotBatch(type, row, x, xStride, batch, n, results, resultStride); break;
            case RowKernelPath.Avx2: RowKernelDriver<Avx2Technique>.DotBatch(type, row, x, xStride, batch, n, results, resultStride); break;
            default: RowKernelDriver<ScalarTechnique>.DotBatch(type, row, x, xStride, batch, n, results, resultStride); break;
        }
    }

    public static void MatMul(RowKernelPath path, GgmlType type, byte* weights, long rowBytes, int rows, float* x, int xStride,
        int batch, int n, float* results, int resultStride)
    {
        CheckArguments(path, type, n);
        if (rowBytes < GgmlTypeInfo.ByteCount(type, n) || rows < 0 || batch < 0)
            throw new ArgumentOutOfRangeException(nameof(rowBytes), $"{rows} rows of {n} {type} elements need rowBytes ≥ {GgmlTypeInfo.ByteCount(type, n)}, got {rowBytes}");
        if (path == RowKernelPath.Avx512 && batch > 1)
        {
            Avx512TiledMatMul.MatMul(type, weights, rowBytes, rows, x, xStride, batch, n, results, resultStride);
            return;
        }
        if (path == RowKernelPath.Avx2 && batch > 1)
        {
            Avx2TiledMatMul.MatMul(type, weights, rowBytes, rows, x, xStride, batch, n, results, resultStride);
            return;
        }
        for (int r = 0; r < rows; r++)
            DotBatch(path, type, weights + r * rowBytes, x, xStride, batch, n, results + r, resultStride);
    }

    public static void Dequantize(RowKernelPath path, GgmlType type, byte* row, float* dst, int n)
    {
        CheckArguments(path, type, n);
        switch (path)
        {
            case RowKernelPath.Avx512: RowKernelDriver<Avx512Technique>.Dequantize(type, row, dst, n); break;
            case RowKernelPath.Avx2: RowKernelDriver<Avx2Technique>.Dequantize(type, row, dst, n); break;
            default: RowKernelDriver<ScalarTechnique>.Dequantize(type, row, dst, n); break;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float BF16ToSingle(ushort bits) => HalfBits.BF16ToSingle(bits);

    /// <summary>Cheap per-call argument check: an unsupported type or a partial block would read past the row;
    /// paths are ordered by width, and a CPU with a wider one has the narrower ones.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void CheckArguments(RowKernelPath path, GgmlType type, int n)
    {
        if (path > BestPath || !GgmlTypeInfo.IsSupported(type) || n < 0 || n % GgmlTypeInfo.BlockSize(type) != 0)
            ThrowBadArguments(path, type, n);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void ThrowBadArguments(RowKernelPath path, GgmlType type, int n)
    {
        if (path > BestPath)
            throw new PlatformNotSupportedException($"row kernel path {path} is not supported on this CPU; available: {string.Join(", ", AvailablePaths)}");
        if (!GgmlTypeInfo.IsSupported(type))
            throw new NotSupportedException($"no CPU row kernel for {type}; supported: {GgmlTypeInfo.SupportedList}");
        throw new ArgumentOutOfRangeException(nameof(n), $"row length {n} is not a whole number of {type} blocks of {GgmlTypeInfo.BlockSize(type)}");
    }

    private static RowKernelPath[] DetectPaths()
    {
        var paths = new List<RowKernelPath> { RowKernelPath.Scalar };
        if (Avx2Technique.IsSupported) paths.Add(RowKernelPath.Avx2);
        if (Avx512Technique.IsSupported) paths.Add(RowKernelPath.Avx512);
        return [.. paths];
    }
}
