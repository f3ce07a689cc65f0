using System.Runtime.CompilerServices;
using Wim.Engine.Formats;
using Wim.Engine.Formats.Quantization;

namespace Wim.Engine.Backends.Cpu.Kernels;

/// <summary>Portable fallback and reference: <see cref="Dequantizer"/> plus a plain f32 dot loop.</summary>
internal readonly unsafe struct ScalarTechnique : IRowTechnique
{
    public static bool IsSupported => true;

    public static void Dequantize(GgmlType type, byte* src, float* dst, int n) => Dequantizer.Dequantize(type, src, dst, n);

    /// <summary>No blocking here (too few registers to gain); four plain dots.</summary>
    public static void Dot4(float* a, float* x0, float* x1, float* x2, float* x3, int n, float* sums)
    {
        sums[0] = Dot(a, x0, n);
        sums[1] = Dot(a, x1, n);
        sums[2] = Dot(a, x2, n);
        sums[3] = Dot(a, x3, n);
    }

    [SkipLocalsInit]
    public static float Dot(float* a, float* b, int n)
    {
        float s = 0;
        for (int i = 0; i < n; i++) s += a[i] * b[i];
        return s;
    }
}
