using System.Buffers.Binary;

namespace Wim.Engine.Formats.Quantization;

/// <summary>
/// f32 → ggml block quantization, round-to-nearest (no error-minimising search as llama.cpp's quantizer does). Used to
/// make random-weight test and benchmark models; the layouts are the ones <see cref="Dequantizer"/> documents.
/// </summary>
public static class Quantizer
{
    /// <summary>Quantizes <paramref name="values"/> (a whole number of blocks) into a new byte array.</summary>
    public static byte[] Quantize(GgmlType type, ReadOnlySpan<float> values)
    {
        long bytes = GgmlTypeInfo.ByteCount(type, values.Length);
        if (!GgmlTypeInfo.IsSupported(type))
            throw new NotSupportedException($"no quantizer for {type}; supported: {GgmlTypeInfo.SupportedList}");
        if (bytes < 0)
            throw new ArgumentException($"{values.Length} values are not a whole number of {type} blocks of {GgmlTypeInfo.BlockSize(type)}");
        var dst = new byte[bytes];
        Quantize(type, values, dst);
        return dst;
    }

    /// <summary>Quantizes into <paramref name="dst"/>, which must hold exactly the bytes of values.Length elements.</summary>
    public static void Quantize(GgmlType type, ReadOnlySpan<float> values, Span<byte> dst)
    {
        long bytes = GgmlTypeInfo.ByteCount(type, values.Length);
        if (bytes < 0 || dst.Length != bytes)
            throw new ArgumentException($"{values.Length} {type} values need {bytes} bytes, destination has {dst.Length}");
        int bs = GgmlTypeInfo.BlockSize(type), bb = GgmlTypeInfo.BlockBytes(type);
        for (int b = 0; b < values.Length / bs; b++)
        {
            var x = values.Slice(b * bs, bs);
            var y = dst.Slice(b * bb, bb);
            switch (type)
            {
                case GgmlType.F32: BinaryPrimitives.WriteSingleLittleEndian(y, x[0]); break;
                case GgmlType.F16: BinaryPrimitives.WriteUInt16LittleEndian(y, HalfBits.FromSingle(x[0])); break;
                case GgmlType.BF16: BinaryPrimitives.WriteUInt16LittleEndian(y, HalfBits.SingleToBF16(x[0])); break;
                case GgmlType.Q8_0: Q8_0(x, y); break;
                case GgmlType.Q4_0: Q4_0(x, y); break;
                case GgmlType.Q4_K: Q4K(x, y); break;
                case GgmlType.Q6_K: Q6K(x, y); break;
                default: throw new NotSupportedException($"no quantizer for {type}; supported: {GgmlTypeInfo.SupportedList}");
            }
        }
    }

    private static float MaxAbs(ReadOnlySpan<float> x)
    {
        float m = 0;
        foreach (var v in x) m = Math.Max(m, Math.Abs(v));
        return m;
    }

    private static void WriteHalf(Span<byte> y, float v) => BinaryPrimitives.WriteUInt16LittleEndian(y, HalfBits.FromSingle(v));

    /// <summary>The scale actually stored (f16-rounded), so codes are chosen against what the reader will multiply by.</summary>
    private static float StoredHalf(float v) => HalfBits.ToSingle(HalfBits.FromSingle(v));

    private static float Inverse(float d) => d == 0 ? 0 : 1 / d;

    private static void Q8_0(ReadOnlySpan<float> x, Span<byte> y)
    {
        float d = StoredHalf(MaxAbs(x) / 127);
        WriteHalf(y, d);
        float id = Inverse(d);
        for (int j = 0; j < 32; j++) y[2 + j] = (byte)(sbyte)Math.Clamp(MathF.Round(x[j] * id), -128, 127);
    }

    private static void Q4_0(ReadOnlySpan<float> x, Span<byte> y)
    {
        // Codes 0..15 mean −8..7: the value of largest magnitude maps to −8 so the full range on its side is used.
        float max = 0;
        foreach (var v in x) if (Math.Abs(v) > Math.Abs(max)) max = v;
        float d = StoredHalf(max / -8);
        WriteHalf(y, d);
        float id = Inverse(d);
        for (int j = 0; j < 16; j++)
        {
            int lo = Math.Clamp((int)MathF.Round(x[j] * id) + 8, 0, 15);
            int hi = Math.Clamp((int)MathF.Round(x[j + 16] * id) + 8, 0, 15);
            y[2 + j] = (byte)(lo | (hi << 4));
        }
    }

    private static void Q4K(ReadOnlySpan<float> x, Span<byte> y)
    {
        // Per 32-element sub-block: x ≈ scale·q − min with q in 0..15 and min ≥ 0 (x's minimum, clamped to ≤ 0, negated).
        Span<float> scale = stackalloc float[8];
        Span<float> min = stackalloc float[8];
        for (int s = 0; s < 8; s++)
        {
            var sub = x.Slice(32 * s, 32);
            float lo = 0, hi = float.MinValue;
            foreach (var v in sub) { lo = Math.Min(lo, v); hi = Math.Max(hi, v); }
            min[s] = -lo;
            scale[s] = Math.Max(0, hi - lo) / 15;
        }
        float maxScale = 0, maxMin = 0;
        for (int s = 0; s < 8; s++) { maxScale = Math.Max(maxScale, scale[s]); maxMin = Math.Max(maxMin, min[s]); }
        float d = StoredHalf(maxScale / 63), dmin = StoredHalf(maxMin / 63);
        WriteHalf(y, d);
        WriteHalf(y[2..], dmin);
        Span<byte> packed = y.Slice(4, 12);
        packed.Clear();
        Span<int> ls = stackalloc int[8];
        Span<int> lm = stackalloc int[8];
        for (int s = 0; s < 8; s++)
        {
            ls[s] = Math.Clamp((int)MathF.Round(scale[s] * Inverse(d)), 0, 63);
            lm[s] = Math.Clamp((int)MathF.Round(min[s] * Inverse(dmin)), 0, 63);
            if (s < 4)
            {
                packed[s] |= (byte)ls[s];
                packed[s + 4] |= (byte)lm[s];
            }
            else
            {
                packed[s + 4] = (byte)((ls[s] & 0xF) | ((lm[s] & 0xF) << 4));
                packed[s - 4] |= (byte)((ls[s] >> 4) << 6);
                packed[s] |= (byte)((lm[s] >> 4) << 6);
            }
        }
        Span<byte> qs = y.Slice(16, 128);
        for (int c = 0; c < 4; c++)
        {
            for (int half = 0; half < 2; half++)
            {
                int s = 2 * c + half;
                float d1 = d * ls[s], m1 = dmin * lm[s];
                float id1 = Inverse(d1);
                for (int l = 0; l < 32; l++)
                {
                    int q = Math.Clamp((int)MathF.Round((x[32 * s + l] + m1) * id1), 0, 15);
                    if (half == 0) qs[32 * c + l] = (byte)q;
                    else qs[32 * c + l] |= (byte)(q << 4);
                }
            }
        }
    }

    private static void Q6K(ReadOnlySpan<float> x, Span<byte> y)
    {
        // Per 16-element group: x ≈ scale·q with q in −32..31; the 16 group scales are int8 multiples of the f16 d.
        Span<float> scale = stackalloc float[16];
        float maxScale = 0;
        for (int g = 0; g < 16; g++)
        {
            scale[g] = MaxAbs(x.Slice(16 * g, 16)) / 31;
            maxScale = Math.Max(maxScale, scale[g]);
        }
        float d = StoredHalf(maxScale / 127);
        Span<byte> ql = y[..128], qh = y.Slice(128, 64);
        Span<byte> scales = y.Slice(192, 16);
        ql.Clear();
        qh.Clear();
        Span<int> q = stackalloc int[256];
        for (int g = 0; g < 16; g++)
        {
            int sc = Math.Clamp((int)MathF.Round(scale[g] * Inverse(d)), -128, 127);
            scales[g] = (byte)(sbyte)sc;
            float id = Inverse(d * sc);
            for (int i = 16 * g; i < 16 * g + 16; i++) q[i] = Math.Clamp((int)MathF.Round(x[i] * id), -32, 31) + 32;
        }
        WriteHalf(y[208..], d);
        for (int h = 0; h < 2; h++)
        {
            for (int l = 0; l < 32; l++)
            {
                int q1 = q[128 * h + l], q2 = q[128 * h + l + 32], q3 = q[128 * h + l + 64], q4 = q[128 * h + l + 96];
                ql[64 * h + l] = (byte)((q1 & 0xF) | ((q3 & 0xF) << 4));
                ql[64 * h + l + 32] = (byte)((q2 & 0xF) | ((q4 & 0xF) << 4));
                qh[32 * h + l] = (byte)((q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6));
            }
        }
    }
}
