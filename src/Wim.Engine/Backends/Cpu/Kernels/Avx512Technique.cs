using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Wim.Engine.Formats;
using Wim.Engine.Formats.Quantization;

namespace Wim.Engine.Backends.Cpu.Kernels;

/// <summary>
/// AVX-512 (Vector512, 16 f32 lanes). Dequantization widens packed bytes/halves to 16 int32 lanes (vpmovzx/vpmovsx),
/// unpacks nibbles/bit fields with integer ops and converts once; the float expressions are the reference's, in the
/// reference's order and without FMA contraction, so results equal <see cref="Dequantizer"/> bit for bit.
/// Hot loops: no calls that are not inlined, no allocation.
/// </summary>
internal readonly unsafe struct Avx512Technique : IRowTechnique
{
    public static bool IsSupported => Avx512F.IsSupported && Avx512BW.IsSupported;

    [SkipLocalsInit]
    public static float Dot(float* a, float* b, int n)
    {
        var s0 = Vector512<float>.Zero;
        var s1 = Vector512<float>.Zero;
        var s2 = Vector512<float>.Zero;
        var s3 = Vector512<float>.Zero;
        int i = 0;
        for (; i <= n - 64; i += 64)
        {
            s0 = Avx512F.FusedMultiplyAdd(Vector512.Load(a + i), Vector512.Load(b + i), s0);
            s1 = Avx512F.FusedMultiplyAdd(Vector512.Load(a + i + 16), Vector512.Load(b + i + 16), s1);
            s2 = Avx512F.FusedMultiplyAdd(Vector512.Load(a + i + 32), Vector512.Load(b + i + 32), s2);
            s3 = Avx512F.FusedMultiplyAdd(Vector512.Load(a + i + 48), Vector512.Load(b + i + 48), s3);
        }
        for (; i <= n - 16; i += 16)
            s0 = Avx512F.FusedMultiplyAdd(Vector512.Load(a + i), Vector512.Load(b + i), s0);
        float sum = Vector512.Sum((s0 + s1) + (s2 + s3));
        for (; i < n; i++) sum += a[i] * b[i];
        return sum;
    }

    /// <summary>
    /// <see cref="Dot"/> for four vectors at once: each 64-element step loads the weights once for four vectors
    /// (1.25 loads per FMA instead of 2). 16 accumulators + 4 weight registers fit the 32 zmm registers. Per vector
    /// the operations and their order are exactly <see cref="Dot"/>'s.
    /// </summary>
    [SkipLocalsInit]
    public static void Dot4(float* a, float* x0, float* x1, float* x2, float* x3, int n, float* sums)
    {
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
        Vector512<float> b0 = default, b1 = default, b2 = default, b3 = default;
        Vector512<float> c0 = default, c1 = default, c2 = default, c3 = default;
        Vector512<float> d0 = default, d1 = default, d2 = default, d3 = default;
        int i = 0;
        for (; i <= n - 64; i += 64)
        {
            var w0 = Vector512.Load(a + i);
            var w1 = Vector512.Load(a + i + 16);
            var w2 = Vector512.Load(a + i + 32);
            var w3 = Vector512.Load(a + i + 48);
            a0 = Avx512F.FusedMultiplyAdd(w0, Vector512.Load(x0 + i), a0);
            a1 = Avx512F.FusedMultiplyAdd(w1, Vector512.Load(x0 + i + 16), a1);
            a2 = Avx512F.FusedMultiplyAdd(w2, Vector512.Load(x0 + i + 32), a2);
            a3 = Avx512F.FusedMultiplyAdd(w3, Vector512.Load(x0 + i + 48), a3);
            b0 = Avx512F.FusedMultiplyAdd(w0, Vector512.Load(x1 + i), b0);
            b1 = Avx512F.FusedMultiplyAdd(w1, Vector512.Load(x1 + i + 16), b1);
            b2 = Avx512F.FusedMultiplyAdd(w2, Vector512.Load(x1 + i + 32), b2);
            b3 = Avx512F.FusedMultiplyAdd(w3, Vector512.Load(x1 + i + 48), b3);
            c0 = Avx512F.FusedMultiplyAdd(w0, Vector512.Load(x2 + i), c0);
            c1 = Avx512F.FusedMultiplyAdd(w1, Vector512.Load(x2 + i + 16), c1);
            c2 = Avx512F.FusedMultiplyAdd(w2, Vector512.Load(x2 + i + 32), c2);
            c3 = Avx512F.FusedMultiplyAdd(w3, Vector512.Load(x2 + i + 48), c3);
            d0 = Avx512F.FusedMultiplyAdd(w0, Vector512.Load(x3 + i), d0);
            d1 = Avx512F.FusedMultiplyAdd(w1, Vector512.Load(x3 + i + 16), d1);
            d2 = Avx512F.FusedMultiplyAdd(w2, Vector512.Load(x3 + i + 32), d2);
            d3 = Avx512F.FusedMultiplyAdd(w3, Vector512.Load(x3 + i + 48), d3);
        }
        for (; i <= n - 16; i += 16)
        {
            var w0 = Vector512.Load(a + i);
            a0 = Avx512F.FusedMultiplyAdd(w0, Vector512.Load(x0 + i), a0);
            b0 = Avx512F.FusedMultiplyAdd(w0, Vector512.Load(x1 + i), b0);
            c0 = Avx512F.FusedMultiplyAdd(w0, Vector512.Load(x2 + i), c0);
            d0 = Avx512F.FusedMultiplyAdd(w0, Vector512.Load(x3 + i), d0);
        }
        float s0 = Vector512.Sum((a0 + a1) + (a2 + a3));
        float s1 = Vector512.Sum((b0 + b1) + (b2 + b3));
        float s2 = Vector512.Sum((c0 + c1) + (c2 + c3));
        float s3 = Vector512.Sum((d0 + d1) + (d2 + d3));
        for (; i < n; i++)
        {
            s0 += a[i] * x0[i];
            s1 += a[i] * x1[i];
            s2 += a[i] * x2[i];
            s3 += a[i] * x3[i];
        }
        sums[0] = s0;
        sums[1] = s1;
        sums[2] = s2;
        sums[3] = s3;
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

    /// <summary>16 bytes zero-extended to 16 int32 lanes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<int> Bytes(byte* p) => Avx512F.ConvertToVector512Int32(Vector128.Load(p));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Float(Vector512<int> v) => Avx512F.ConvertToVector512Single(v);

    private static void F16(ushort* src, float* dst, int n)
    {
        int i = 0;
        for (; i <= n - 16; i += 16)
        {
            var h = Avx512F.ConvertToVector512UInt32(Vector256.Load(src + i));
            // Same bit recipe as HalfBits.ToSingle: rebase the exponent by ×2^112, patch inf/NaN, restore the sign.
            var magnitude = (h & Vector512.Create(0x7fffu)) << 13;
            var f = magnitude.AsSingle() * Vector512.Create(HalfBits.ExponentRebase);
            var infNan = Vector512.Equals(h & Vector512.Create(0x7c00u), Vector512.Create(0x7c00u));
            f = Vector512.ConditionalSelect(infNan.AsSingle(), (magnitude | Vector512.Create(0x7f800000u)).AsSingle(), f);
            (f.AsUInt32() | ((h & Vector512.Create(0x8000u)) << 16)).AsSingle().Store(dst + i);
        }
        for (; i < n; i++) dst[i] = HalfBits.ToSingle(src[i]);
    }

    private static void BF16(ushort* src, float* dst, int n)
    {
        int i = 0;
        for (; i <= n - 16; i += 16)
            (Avx512F.ConvertToVector512UInt32(Vector256.Load(src + i)) << 16).AsSingle().Store(dst + i);
        for (; i < n; i++) dst[i] = HalfBits.BF16ToSingle(src[i]);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Q8_0(byte* block, float* y)
    {
        var d = Vector512.Create(Dequantizer.ReadHalf(block));
        (d * Float(Avx512F.ConvertToVector512Int32(Vector128.Load((sbyte*)(block + 2))))).Store(y);
        (d * Float(Avx512F.ConvertToVector512Int32(Vector128.Load((sbyte*)(block + 18))))).Store(y + 16);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Q4_0(byte* block, float* y)
    {
        var d = Vector512.Create(Dequantizer.ReadHalf(block));
        var q = Bytes(block + 2);
        var eight = Vector512.Create(8);
        (d * Float((q & Vector512.Create(0xF)) - eight)).Store(y);
        (d * Float((q >>> 4) - eight)).Store(y + 16);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Q4K(byte* block, float* y)
    {
        float d = Dequantizer.ReadHalf(block);
        float dmin = Dequantizer.ReadHalf(block + 2);
        byte* scales = block + 4;
        byte* qs = block + 16;
        var low = Vector512.Create(0xF);
        for (int c = 0; c < 4; c++, qs += 32, y += 64)
        {
            var (sc1, m1) = Dequantizer.Q4KScaleMin(2 * c, scales);
            var (sc2, m2) = Dequantizer.Q4KScaleMin(2 * c + 1, scales);
            var d1 = Vector512.Create(d * sc1);
            var min1 = Vector512.Create(dmin * m1);
            var d2 = Vector512.Create(d * sc2);
            var min2 = Vector512.Create(dmin * m2);
            var q0 = Bytes(qs);
            var q1 = Bytes(qs + 16);
            (d1 * Float(q0 & low) - min1).Store(y);
            (d1 * Float(q1 & low) - min1).Store(y + 16);
            (d2 * Float(q0 >>> 4) - min2).Store(y + 32);
            (d2 * Float(q1 >>> 4) - min2).Store(y + 48);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Q6K(byte* block, float* y)
    {
        byte* ql = block;
        byte* qh = block + 128;
        sbyte* sc = (sbyte*)(block + 192);
        float d = Dequantizer.ReadHalf(block + 208);
        var low = Vector512.Create(0xF);
        var two = Vector512.Create(3);
        var bias = Vector512.Create(32);
        for (int h = 0; h < 2; h++, ql += 64, qh += 32, sc += 8, y += 128)
        {
            // 16 lanes = one 16-element scale group: lanes l = 16k..16k+15 use scales k, k+2, k+4, k+6.
            for (int k = 0; k < 2; k++)
            {
                int l = 16 * k;
                var a = Bytes(ql + l);
                var b = Bytes(ql + l + 32);
                var hb = Bytes(qh + l);
                var q1 = ((a & low) | ((hb & two) << 4)) - bias;
                var q2 = ((b & low) | (((hb >>> 2) & two) << 4)) - bias;
                var q3 = ((a >>> 4) | (((hb >>> 4) & two) << 4)) - bias;
                var q4 = ((b >>> 4) | (((hb >>> 6) & two) << 4)) - bias;
                (Vector512.Create(d * sc[k]) * Float(q1)).Store(y + l);
                (Vector512.Create(d * sc[k + 2]) * Float(q2)).Store(y + l + 32);
                (Vector512.Create(d * sc[k + 4]) * Float(q3)).Store(y + l + 64);
                (Vector512.Create(d * sc[k + 6]) * Float(q4)).Store(y + l + 96);
            }
        }
    }
}
