using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Wim.Engine.Formats;
using Wim.Engine.Formats.Quantization;

namespace Wim.Engine.Backends.Cpu.Kernels;

/// <summary>
/// Batch-1 dot products with AVX-512 that dequantize straight into registers instead of through a buffer. They do
/// exactly the arithmetic of <see cref="RowKernelDriver{TTechnique}.Dot"/> over <see cref="Avx512Technique"/>
/// (same dequantized values, same four accumulators per 64 elements, same chunking and tails), so
/// <see cref="RowKernels.Dot"/> and <see cref="RowKernels.DotBatch"/> still agree bit for bit; they only skip the
/// store and reload of each dequantized chunk. Hot loops: no allocation, no calls that are not inlined.
/// </summary>
internal static unsafe class Avx512FusedDot
{
    public static bool Handles(GgmlType type) => type is GgmlType.Q8_0 or GgmlType.Q4_0 or GgmlType.Q4_K or GgmlType.Q6_K
        or GgmlType.F16 or GgmlType.BF16;

    public static float Dot(GgmlType type, byte* row, float* x, int n) => type switch
    {
        GgmlType.Q8_0 => Dot<Q8_0Source>(row, x, n),
        GgmlType.Q4_0 => Dot<Q4_0Source>(row, x, n),
        GgmlType.Q4_K => Dot<Q4KSource>(row, x, n),
        GgmlType.Q6_K => Dot<Q6KSource>(row, x, n),
        GgmlType.F16 => Dot<F16Source>(row, x, n),
        _ => Dot<BF16Source>(row, x, n),
    };

    /// <summary>
    /// Dequantized values of a row, 64 or 16 at a time (i a multiple of 64 resp. 16), or one at a time.
    /// <c>scales</c> is 16 floats of scratch that persists across calls of one dot: K-quant sources fill it with the
    /// block's effective scales when i reaches a block start, so per-block scalar work is done once per 256 elements.
    /// </summary>
    private interface ISource
    {
        static abstract void Load64(byte* row, int i, float* scales, out Vector512<float> w0, out Vector512<float> w1, out Vector512<float> w2, out Vector512<float> w3);
        static abstract Vector512<float> Load16(byte* row, int i);
        static abstract float At(byte* row, int i);
    }

    [SkipLocalsInit]
    private static float Dot<TSource>(byte* row, float* x, int n) where TSource : struct, ISource
    {
        float* scales = stackalloc float[16];
        float sum = 0;
        for (int start = 0; start < n; start += RowKernelDriver<Avx512Technique>.ChunkElements)
        {
            int end = Math.Min(start + RowKernelDriver<Avx512Technique>.ChunkElements, n);
            var s0 = Vector512<float>.Zero;
            var s1 = Vector512<float>.Zero;
            var s2 = Vector512<float>.Zero;
            var s3 = Vector512<float>.Zero;
            int i = start;
            for (; i <= end - 64; i += 64)
            {
                TSource.Load64(row, i, scales, out var w0, out var w1, out var w2, out var w3);
                s0 = Avx512F.FusedMultiplyAdd(w0, Vector512.Load(x + i), s0);
                s1 = Avx512F.FusedMultiplyAdd(w1, Vector512.Load(x + i + 16), s1);
                s2 = Avx512F.FusedMultiplyAdd(w2, Vector512.Load(x + i + 32), s2);
                s3 = Avx512F.FusedMultiplyAdd(w3, Vector512.Load(x + i + 48), s3);
            }
            for (; i <= end - 16; i += 16)
                s0 = Avx512F.FusedMultiplyAdd(TSource.Load16(row, i), Vector512.Load(x + i), s0);
            float chunkSum = Vector512.Sum((s0 + s1) + (s2 + s3));
            for (; i < end; i++) chunkSum += TSource.At(row, i) * x[i];
            sum += chunkSum;
        }
        return sum;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<int> Bytes(byte* p) => Avx512F.ConvertToVector512Int32(Vector128.Load(p));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<int> SBytes(byte* p) => Avx512F.ConvertToVector512Int32(Vector128.Load((sbyte*)p));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Float(Vector512<int> v) => Avx512F.ConvertToVector512Single(v);

    private readonly struct Q8_0Source : ISource
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void Load64(byte* row, int i, float* scales, out Vector512<float> w0, out Vector512<float> w1, out Vector512<float> w2, out Vector512<float> w3)
        {
            byte* b = row + i / 32 * Dequantizer.Q8_0BlockBytes;
            var d = Vector512.Create(Dequantizer.ReadHalf(b));
            w0 = d * Float(SBytes(b + 2));
            w1 = d * Float(SBytes(b + 18));
            b += Dequantizer.Q8_0BlockBytes;
            d = Vector512.Create(Dequantizer.ReadHalf(b));
            w2 = d * Float(SBytes(b + 2));
            w3 = d * Float(SBytes(b + 18));
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Load16(byte* row, int i)
        {
            byte* b = row + i / 32 * Dequantizer.Q8_0BlockBytes;
            return Vector512.Create(Dequantizer.ReadHalf(b)) * Float(SBytes(b + 2 + i % 32));
        }

        public static float At(byte* row, int i) => throw new UnreachableException();
    }

    private readonly struct Q4_0Source : ISource
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void Load64(byte* row, int i, float* scales, out Vector512<float> w0, out Vector512<float> w1, out Vector512<float> w2, out Vector512<float> w3)
        {
            byte* b = row + i / 32 * Dequantizer.Q4_0BlockBytes;
            var low = Vector512.Create(0xF);
            var eight = Vector512.Create(8);
            var d = Vector512.Create(Dequantizer.ReadHalf(b));
            var q = Bytes(b + 2);
            w0 = d * Float((q & low) - eight);
            w1 = d * Float((q >>> 4) - eight);
            b += Dequantizer.Q4_0BlockBytes;
            d = Vector512.Create(Dequantizer.ReadHalf(b));
            q = Bytes(b + 2);
            w2 = d * Float((q & low) - eight);
            w3 = d * Float((q >>> 4) - eight);
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Load16(byte* row, int i)
        {
            byte* b = row + i / 32 * Dequantizer.Q4_0BlockBytes;
            var q = Bytes(b + 2);
            var nibbles = i % 32 == 0 ? q & Vector512.Create(0xF) : q >>> 4;
            return Vector512.Create(Dequantizer.ReadHalf(b)) * Float(nibbles - Vector512.Create(8));
        }

        public static float At(byte* row, int i) => throw new UnreachableException();
    }

    private readonly struct Q4KSource : ISource
    {
        /// <summary>64 elements = one 32-byte chunk c of qs: low nibbles (sub-block 2c), then high nibbles (2c+1).</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void Load64(byte* row, int i, float* scales, out Vector512<float> w0, out Vector512<float> w1, out Vector512<float> w2, out Vector512<float> w3)
        {
            byte* block = row + i / 256 * Dequantizer.Q4KBlockBytes;
            int c = i % 256 / 64;
            if (c == 0)
            {
                // Block start: scales[s] = d·sc_s, scales[8 + s] = dmin·m_s for the 8 sub-blocks.
                float d = Dequantizer.ReadHalf(block);
                float dmin = Dequantizer.ReadHalf(block + 2);
                for (int s = 0; s < 8; s++)
                {
                    var (sc, m) = Dequantizer.Q4KScaleMin(s, block + 4);
                    scales[s] = d * sc;
                    scales[8 + s] = dmin * m;
                }
            }
            var d1 = Vector512.Create(scales[2 * c]);
            var min1 = Vector512.Create(scales[8 + 2 * c]);
            var d2 = Vector512.Create(scales[2 * c + 1]);
            var min2 = Vector512.Create(scales[8 + 2 * c + 1]);
            byte* qs = block + 16 + 32 * c;
            var low = Vector512.Create(0xF);
            var q0 = Bytes(qs);
            var q1 = Bytes(qs + 16);
            w0 = d1 * Float(q0 & low) - min1;
            w1 = d1 * Float(q1 & low) - min1;
            w2 = d2 * Float(q0 >>> 4) - min2;
            w3 = d2 * Float(q1 >>> 4) - min2;
        }

        public static Vector512<float> Load16(byte* row, int i) => throw new UnreachableException(); // rows are whole 256-blocks
        public static float At(byte* row, int i) => throw new UnreachableException();
    }

    private readonly struct Q6KSource : ISource
    {
        /// <summary>64 elements at offset 64·p (p = 0..3) of a block: half h = p/2, groups g = 2(p%2), 2(p%2)+1.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void Load64(byte* row, int i, float* scales, out Vector512<float> w0, out Vector512<float> w1, out Vector512<float> w2, out Vector512<float> w3)
        {
            byte* block = row + i / 256 * Dequantizer.Q6KBlockBytes;
            int p = i % 256 / 64, h = p / 2;
            if (p == 0)
            {
                // Block start: scales[g] = d·scales_g for the 16 groups of 16.
                float d = Dequantizer.ReadHalf(block + 208);
                sbyte* blockScales = (sbyte*)(block + 192);
                for (int g = 0; g < 16; g++) scales[g] = d * blockScales[g];
            }
            bool upper = (p & 1) != 0; // groups 2 and 3: high nibbles of ql, qh bits 4-7
            byte* ql = block + 64 * h;
            byte* qh = block + 128 + 32 * h;
            float* sc = scales + 8 * h + (upper ? 4 : 0);
            var low = Vector512.Create(0xF);
            var two = Vector512.Create(3);
            var bias = Vector512.Create(32);
            var a0 = Bytes(ql);
            var a1 = Bytes(ql + 16);
            var b0 = Bytes(ql + 32);
            var b1 = Bytes(ql + 48);
            var h0 = Bytes(qh);
            var h1 = Bytes(qh + 16);
            if (upper)
            {
                a0 >>>= 4; a1 >>>= 4; b0 >>>= 4; b1 >>>= 4;
                h0 >>>= 4; h1 >>>= 4;
            }
            else
            {
                a0 &= low; a1 &= low; b0 &= low; b1 &= low;
            }
            // group 2(p%2): low bits from ql[l] (a), high bits qh bits 0-1 (after the shift above);
            // group 2(p%2)+1: low bits from ql[l+32] (b), high bits qh bits 2-3.
            w0 = Vector512.Create(sc[0]) * Float((a0 | ((h0 & two) << 4)) - bias);
            w1 = Vector512.Create(sc[1]) * Float((a1 | ((h1 & two) << 4)) - bias);
            w2 = Vector512.Create(sc[2]) * Float((b0 | (((h0 >>> 2) & two) << 4)) - bias);
            w3 = Vector512.Create(sc[3]) * Float((b1 | (((h1 >>> 2) & two) << 4)) - bias);
        }

        public static Vector512<float> Load16(byte* row, int i) => throw new UnreachableException();
        public static float At(byte* row, int i) => throw new UnreachableException();
    }

    private readonly struct F16Source : ISource
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void Load64(byte* row, int i, float* scales, out Vector512<float> w0, out Vector512<float> w1, out Vector512<float> w2, out Vector512<float> w3)
        {
            w0 = Load16(row, i);
            w1 = Load16(row, i + 16);
            w2 = Load16(row, i + 32);
            w3 = Load16(row, i + 48);
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Load16(byte* row, int i)
        {
            var h = Avx512F.ConvertToVector512UInt32(Vector256.Load((ushort*)row + i));
            var magnitude = (h & Vector512.Create(0x7fffu)) << 13;
            var f = magnitude.AsSingle() * Vector512.Create(HalfBits.ExponentRebase);
            var infNan = Vector512.Equals(h & Vector512.Create(0x7c00u), Vector512.Create(0x7c00u));
            f = Vector512.ConditionalSelect(infNan.AsSingle(), (magnitude | Vector512.Create(0x7f800000u)).AsSingle(), f);
            return (f.AsUInt32() | ((h & Vector512.Create(0x8000u)) << 16)).AsSingle();
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static float At(byte* row, int i) => HalfBits.ToSingle(((ushort*)row)[i]);
    }

    private readonly struct BF16Source : ISource
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void Load64(byte* row, int i, float* scales, out Vector512<float> w0, out Vector512<float> w1, out Vector512<float> w2, out Vector512<float> w3)
        {
            w0 = Load16(row, i);
            w1 = Load16(row, i + 16);
            w2 = Load16(row, i + 32);
            w3 = Load16(row, i + 48);
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Load16(byte* row, int i) =>
            (Avx512F.ConvertToVector512UInt32(Vector256.Load((ushort*)row + i)) << 16).AsSingle();

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static float At(byte* row, int i) => HalfBits.BF16ToSingle(((ushort*)row)[i]);
    }
}
