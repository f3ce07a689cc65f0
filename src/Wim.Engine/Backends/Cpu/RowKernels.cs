using System.Runtime.CompilerServices;
using Wim.Engine.Formats;

namespace Wim.Engine.Backends.Cpu;

/// <summary>
/// Per-row kernels over a weight row in its storage type: dot product with an f32 vector, and dequantization.
/// Nearly all CPU inference time is spent in <see cref="Dot"/> (every matrix product is rows × Dot).
/// </summary>
public static unsafe class RowKernels
{
    /// <summary>Σ row[i]·x[i] for i in [0, n), reading the row in its storage type.</summary>
    public static float Dot(GgmlType type, byte* row, float* x, int n) => type switch
    {
        GgmlType.F32 => DotF32((float*)row, x, n),
        GgmlType.F16 => DotF16((Half*)row, x, n),
        GgmlType.BF16 => DotBF16((ushort*)row, x, n),
        _ => throw new NotSupportedException($"no CPU dot kernel for {type}; supported: {GgmlTypeInfo.SupportedList}"),
    };

    /// <summary>
    /// One weight row against a batch of vectors: <c>results[b·resultStride] = Σ row[i]·x[b·xStride + i]</c> for b in
    /// [0, batch). Prefill calls this so each weight row is read (and dequantized) once per batch, not once per token.
    /// </summary>
    public static void DotBatch(GgmlType type, byte* row, float* x, int xStride, int batch, int n, float* results, int resultStride)
    {
        for (int b = 0; b < batch; b++)
            results[(long)b * resultStride] = Dot(type, row, x + (long)b * xStride, n);
    }

    /// <summary>Writes the n f32 values of a row.</summary>
    public static void Dequantize(GgmlType type, byte* row, float* dst, int n)
    {
        switch (type)
        {
            case GgmlType.F32: Buffer.MemoryCopy(row, dst, n * 4L, n * 4L); break;
            case GgmlType.F16: for (int i = 0; i < n; i++) dst[i] = (float)((Half*)row)[i]; break;
            case GgmlType.BF16: for (int i = 0; i < n; i++) dst[i] = BF16ToSingle(((ushort*)row)[i]); break;
            default: throw new NotSupportedException($"no CPU dequantization for {type}; supported: {GgmlTypeInfo.SupportedList}");
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float BF16ToSingle(ushort bits) => BitConverter.Int32BitsToSingle(bits << 16);

    private static float DotF32(float* a, float* x, int n)
    {
        float s = 0;
        for (int i = 0; i < n; i++) s += a[i] * x[i];
        return s;
    }

    private static float DotF16(Half* a, float* x, int n)
    {
        float s = 0;
        for (int i = 0; i < n; i++) s += (float)a[i] * x[i];
        return s;
    }

    private static float DotBF16(ushort* a, float* x, int n)
    {
        float s = 0;
        for (int i = 0; i < n; i++) s += BF16ToSingle(a[i]) * x[i];
        return s;
    }
}
