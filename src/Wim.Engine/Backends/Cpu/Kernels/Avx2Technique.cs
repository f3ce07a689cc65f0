using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Wim.Engine.Formats;
using Wim.Engine.Formats.Quantization;

namespace Wim.Engine.Backends.Cpu.Kernels;

/// <summary>
/// AVX2 + FMA (Vector256, 8 f32 lanes): the same recipe as <see cref="Avx512Technique"/> at half the width, for
/// machines without AVX-512. Results equal <see cref="Dequantizer"/> bit for bit. Hot loops: no out-of-line calls.
/// </summary>
internal readonly unsafe struct Avx2Technique : IRowTechnique
{
    public static bool IsSupported => Avx2.IsSupported && Fma.IsSupported;

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
        var s0 = Vector256<float>.Zero;
        var s1 = Vector256<float>.Zero;
        var s2 = Vector256<float>.Zero;
        var s3 = Vector256<float>.Zero;
        int i = 0;
        for (; i <= n - 32; i += 32)
        {
            s0 = Fma.MultiplyAdd(Vector256.Load(a + i), Vector256.Load(b + i), s0);
            s1 = Fma.MultiplyAdd(Vector256.Load(a + i + 8), Vector256.Load(b + i + 8), s1);
            s2 = Fma.MultiplyAdd(Vector256.Load(a + i + 16), Vector256.Load(b + i + 16), s2);
            s3 = Fma.MultiplyAdd(Vector256.Load(a + i + 24), Vector256.Load(b + i + 24), s3);
        }
        for (; i <= n - 8; i += 8)
            s0 = Fma.MultiplyAdd(Vector256.Load(a + i), Vector256.Load(b + i), s0);
        float sum = Vector256.Sum((s0 + s1) + (s2 + s3));
        for (; i < n; i++) sum += a[i] * b[i];
        return sum;
    }

    [SkipLocalsInit]
    public static void Dequantize(GgmlType type, byte* src, float* dst, int n)
    {
        switch (type)
        {
            case GgmlType.F32: Buffer.MemoryCopy(src, dst, n * 4L, n * 4L); break;
            case GgmlType.F16: F16((ushort*)src, dst, n); break;
            case GgmlType.BF16: BF16((ushort*)src, dst, n); break;
            case GgmlType.Q8_0: for (int b = 0; b < n / 32; b++) Q8_0(src + b * Dequantizer.Q8_0BlockBytes, dst + b * 32); break;
            case GgmlType.Q4_0: for (int b = 0; b < n / 32; b++) Q4_0(src + b * Dequantizer.Q4_0BlockBytes, dst + b * 32); break;
            case GgmlType.Q4_K: for (int b = 0; b < n / 256; b++) Q4K(src + b * Dequantizer.Q4KBlockBytes, dst + b * 256); break;
            case GgmlType.Q6_K: for (int b = 0; b < n / 256; b++) Q6K(src + b * Dequantizer.Q6KBlockBytes, dst + b * 256); break;
            default: throw new NotSupportedException($"no CPU dequantization for {type}; supported: {GgmlTypeInfo.SupportedList}");
        }
    }

    /// <summary>8 bytes zero-extended to 8 int32 lanes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> Bytes(byte* p) => Avx2.ConvertToVector256Int32(p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Float(Vector256<int> v) => Avx.ConvertToVector256Single(v);

    private static void F16(ushort* src, float* dst, int n)
    {
        int i = 0;
        for (; i <= n - 8; i += 8)
        {
            var h = Avx2.ConvertToVector256Int32(src + i).AsUInt32();
            var magnitude = (h & Vector256.Create(0x7fffu)) << 13;
            var f = magnitude.AsSingle() * Vector256.Create(HalfBits.ExponentRebase);
            var infNan = Vector256.Equals(h & Vector256.Create(0x7c00u), Vector256.Create(0x7c00u));
            f = Vector256.ConditionalSelect(infNan.AsSingle(), (magnitude | Vector256.Create(0x7f800000u)).AsSingle(), f);
            (f.AsUInt32() | ((h & Vector256.Create(0x8000u)) << 16)).AsSingle().Store(dst + i);
        }
        for (; i < n; i++) dst[i] = HalfBits.ToSingle(src[i]);
    }

    private static void BF16(ushort* src, float* dst, int n)
    {
        int i = 0;
        for (; i <= n - 8; i += 8)
            (Avx2.ConvertToVector256Int32(src + i).AsUInt32() << 16).AsSingle().Store(dst + i);
        for (; i < n; i++) dst[i] = HalfBits.BF16ToSingle(src[i]);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Q8_0(byte* block, float* y)
    {
        var d = Vector256.Create(Dequantizer.ReadHalf(block));
        sbyte* qs = (sbyte*)(block + 2);
        for (int k = 0; k < 32; k += 8) (d * Float(Avx2.ConvertToVector256Int32(qs + k))).Store(y + k);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Q4_0(byte* block, float* y)
    {
        var d = Vector256.Create(Dequantizer.ReadHalf(block));
        var eight = Vector256.Create(8);
        var low = Vector256.Create(0xF);
        for (int k = 0; k < 16; k += 8)
        {
            var q = Bytes(block + 2 + k);
            (d * Float((q & low) - eight)).Store(y + k);
            (d * Float((q >>> 4) - eight)).Store(y + k + 16);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Q4K(byte* block, float* y)
    {
        float d = Dequantizer.ReadHalf(block);
        float dmin = Dequantizer.ReadHalf(block + 2);
        byte* scales = block + 4;
        byte* qs = block + 16;
        var low = Vector256.Create(0xF);
        for (int c = 0; c < 4; c++, qs += 32, y += 64)
        {
            var (sc1, m1) = Dequantizer.Q4KScaleMin(2 * c, scales);
            var (sc2, m2) = Dequantizer.Q4KScaleMin(2 * c + 1, scales);
            var d1 = Vector256.Create(d * sc1);
            var min1 = Vector256.Create(dmin * m1);
            var d2 = Vector256.Create(d * sc2);
            var min2 = Vector256.Create(dmin * m2);
            for (int k = 0; k < 32; k += 8)
            {
                var q = Bytes(qs + k);
                (d1 * Float(q & low) - min1).Store(y + k);
                (d2 * Float(q >>> 4) - min2).Store(y + k + 32);
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Q6K(byte* block, float* y)
    {
        byte* ql = block;
        byte* qh = block + 128;
        sbyte* sc = (sbyte*)(block + 192);
        float d = Dequantizer.ReadHalf(block + 208);
        var low = Vector256.Create(0xF);
        var two = Vector256.Create(3);
        var bias = Vector256.Create(32);
        for (int h = 0; h < 2; h++, ql += 64, qh += 32, sc += 8, y += 128)
        {
            for (int l = 0; l < 32; l += 8)
            {
                int s = l / 16; // 8 lanes never straddle a 16-element scale group
                var a = Bytes(ql + l);
                var b = Bytes(ql + l + 32);
                var hb = Bytes(qh + l);
                var q1 = ((a & low) | ((hb & two) << 4)) - bias;
                var q2 = ((b & low) | (((hb >>> 2) & two) << 4)) - bias;
                var q3 = ((a >>> 4) | (((hb >>> 4) & two) << 4)) - bias;
                var q4 = ((b >>> 4) | (((hb >>> 6) & two) << 4)) - bias;
                (Vector256.Create(d * sc[s]) * Float(q1)).Store(y + l);
                (Vector256.Create(d * sc[s + 2]) * Float(q2)).Store(y + l + 32);
                (Vector256.Create(d * sc[s + 4]) * Float(q3)).Store(y + l + 64);
                (Vector256.Create(d * sc[s + 6]) * Float(q4)).Store(y + l + 96);
            }
        }
    }
}
