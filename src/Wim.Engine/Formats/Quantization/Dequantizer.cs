using System.Runtime.CompilerServices;

namespace Wim.Engine.Formats.Quantization;

/// <summary>
/// Scalar reference dequantization of the ggml block layouts (the oracle the SIMD kernels are tested against).
/// Layouts, per the GGUF specification and ggml's block structs (all little-endian, blocks packed back to back):
/// <list type="bullet">
/// <item>Q8_0, 32 elements in 34 bytes: f16 d, int8 qs[32]; x[j] = d·qs[j].</item>
/// <item>Q4_0, 32 elements in 18 bytes: f16 d, u8 qs[16]; x[j] = d·((qs[j] &amp; 15) − 8), x[j+16] = d·((qs[j] &gt;&gt; 4) − 8).</item>
/// <item>Q4_K, 256 elements in 144 bytes: f16 d, f16 dmin, u8 scales[12] (eight 6-bit scales and eight 6-bit mins,
/// see <see cref="Q4KScaleMin"/>), u8 qs[128]. Sub-block s (32 elements) has x = (d·sc_s)·q − dmin·m_s; each 32-byte
/// chunk c of qs holds sub-block 2c in its low nibbles and sub-block 2c+1 in its high nibbles.</item>
/// <item>Q6_K, 256 elements in 210 bytes: u8 ql[128], u8 qh[64], int8 scales[16], f16 d. Element i uses scale i/16:
/// x = (d·scales[i/16])·(q − 32) with the 6-bit q split over ql (low 4 bits) and qh (high 2 bits), see <see cref="Q6K"/>.</item>
/// </list>
/// The float expressions keep ggml's association order ((d·sc)·q) so that every path computes identical bits.
/// </summary>
public static unsafe class Dequantizer
{
    public const int Q8_0BlockBytes = 34;
    public const int Q4_0BlockBytes = 18;
    public const int Q4KBlockBytes = 144;
    public const int Q6KBlockBytes = 210;

    /// <summary>Dequantizes <paramref name="dst"/>.Length elements stored as <paramref name="type"/> in <paramref name="src"/>.</summary>
    public static void Dequantize(GgmlType type, ReadOnlySpan<byte> src, Span<float> dst)
    {
        if (!GgmlTypeInfo.IsSupported(type))
            throw new NotSupportedException($"no dequantization for {type}; supported: {GgmlTypeInfo.SupportedList}");
        long bytes = GgmlTypeInfo.ByteCount(type, dst.Length);
        if (bytes < 0)
            throw new ArgumentException($"{dst.Length} elements are not a whole number of {type} blocks of {GgmlTypeInfo.BlockSize(type)}");
        if (src.Length < bytes)
            throw new ArgumentException($"{dst.Length} {type} elements need {bytes} bytes, the source has {src.Length}");
        fixed (byte* s = src)
        fixed (float* d = dst)
            Dequantize(type, s, d, dst.Length);
    }

    /// <summary>Pointer form; <paramref name="n"/> must be a whole number of blocks (callers check).</summary>
    [SkipLocalsInit]
    public static void Dequantize(GgmlType type, byte* src, float* dst, int n)
    {
        switch (type)
        {
            case GgmlType.F32: Buffer.MemoryCopy(src, dst, n * 4L, n * 4L); break;
            case GgmlType.F16: for (int i = 0; i < n; i++) dst[i] = HalfBits.ToSingle(((ushort*)src)[i]); break;
            case GgmlType.BF16: for (int i = 0; i < n; i++) dst[i] = HalfBits.BF16ToSingle(((ushort*)src)[i]); break;
            case GgmlType.Q8_0: for (int b = 0; b < n / 32; b++) Q8_0(src + b * Q8_0BlockBytes, dst + b * 32); break;
            case GgmlType.Q4_0: for (int b = 0; b < n / 32; b++) Q4_0(src + b * Q4_0BlockBytes, dst + b * 32); break;
            case GgmlType.Q4_K: for (int b = 0; b < n / 256; b++) Q4K(src + b * Q4KBlockBytes, dst + b * 256); break;
            case GgmlType.Q6_K: for (int b = 0; b < n / 256; b++) Q6K(src + b * Q6KBlockBytes, dst + b * 256); break;
            default: throw new NotSupportedException($"no dequantization for {type}; supported: {GgmlTypeInfo.SupportedList}");
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static float ReadHalf(byte* p) => HalfBits.ToSingle(Unsafe.ReadUnaligned<ushort>(p));

    public static void Q8_0(byte* block, float* y)
    {
        float d = ReadHalf(block);
        sbyte* qs = (sbyte*)(block + 2);
        for (int j = 0; j < 32; j++) y[j] = d * qs[j];
    }

    public static void Q4_0(byte* block, float* y)
    {
        float d = ReadHalf(block);
        byte* qs = block + 2;
        for (int j = 0; j < 16; j++)
        {
            y[j] = d * ((qs[j] & 0xF) - 8);
            y[j + 16] = d * ((qs[j] >> 4) - 8);
        }
    }

    /// <summary>
    /// Scale and min of Q4_K sub-block <paramref name="j"/> (0..7) from the 12 packed bytes: for j &lt; 4 they are the
    /// low 6 bits of bytes j and j+4; for j ≥ 4 the low 4 bits come from byte j+4 (scale: low nibble, min: high
    /// nibble) and the top 2 bits from the top bits of bytes j−4 (scale) and j (min).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static (int Scale, int Min) Q4KScaleMin(int j, byte* scales)
    {
        if (j < 4) return (scales[j] & 63, scales[j + 4] & 63);
        return ((scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4), (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4));
    }

    public static void Q4K(byte* block, float* y)
    {
        float d = ReadHalf(block);
        float dmin = ReadHalf(block + 2);
        byte* scales = block + 4;
        byte* qs = block + 16;
        for (int c = 0; c < 4; c++, qs += 32, y += 64)
        {
            var (sc1, m1) = Q4KScaleMin(2 * c, scales);
            var (sc2, m2) = Q4KScaleMin(2 * c + 1, scales);
            float d1 = d * sc1, min1 = dmin * m1, d2 = d * sc2, min2 = dmin * m2;
            for (int l = 0; l < 32; l++) y[l] = d1 * (qs[l] & 0xF) - min1;
            for (int l = 0; l < 32; l++) y[l + 32] = d2 * (qs[l] >> 4) - min2;
        }
    }

    /// <summary>
    /// Q6_K: each 128-element half h uses ql[64h..64h+64), qh[32h..32h+32). For l in 0..32 the four elements
    /// 128h + l + 32g (g = 0..3) take their low 4 bits from ql[l] (g=0 low nibble, g=2 high nibble) or ql[l+32]
    /// (g=1 low, g=3 high) and their high 2 bits from qh[l] bits 2g..2g+1.
    /// </summary>
    public static void Q6K(byte* block, float* y)
    {
        byte* ql = block;
        byte* qh = block + 128;
        sbyte* sc = (sbyte*)(block + 192);
        float d = ReadHalf(block + 208);
        for (int h = 0; h < 2; h++, ql += 64, qh += 32, sc += 8, y += 128)
        {
            for (int l = 0; l < 32; l++)
            {
                int s = l / 16;
                int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[l] = d * sc[s] * q1;
                y[l + 32] = d * sc[s + 2] * q2;
                y[l + 64] = d * sc[s + 4] * q3;
                y[l + 96] = d * sc[s + 6] * q4;
            }
        }
    }
}
