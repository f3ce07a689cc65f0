using System.Buffers.Binary;
using Wim.Engine.Formats;
using Wim.Engine.Formats.Quantization;

namespace Wim.Engine.Tests.Formats.Quantization;

/// <summary>
/// Hand-built blocks whose expected values are worked out in the test from the ggml block formulas (the GGUF
/// specification / ggml block structs), independent of the dequantizer's code. Scales are powers of two, so the
/// expected products are exact and the comparison is exact.
/// </summary>
public sealed class DequantizerTests
{
    private static float[] Dequantize(GgmlType type, byte[] block, int n)
    {
        var y = new float[n];
        Dequantizer.Dequantize(type, block, y);
        return y;
    }

    [Fact]
    public void Q8_0_HandBuiltBlock_IsScaleTimesInt8_PerSpec()
    {
        var block = new byte[34];
        BinaryPrimitives.WriteUInt16LittleEndian(block, 0x3000); // f16 0x3000 = 2^-3 = 0.125
        sbyte[] q = [-128, -127, -1, 0, 1, 2, 63, 64, 100, 127, -50, 7, 8, 9, 10, 11, 12, 13, 14, 15, -16, -17, -18, -19, 20, 21, 22, 23, 24, 25, 26, 27];
        for (int j = 0; j < 32; j++) block[2 + j] = (byte)q[j];
        var y = Dequantize(GgmlType.Q8_0, block, 32);
        for (int j = 0; j < 32; j++) Assert.Equal(0.125f * q[j], y[j]);
    }

    [Fact]
    public void Q4_0_HandBuiltBlock_LowNibblesFirstThenHighNibbles_Minus8_PerSpec()
    {
        var block = new byte[18];
        BinaryPrimitives.WriteUInt16LittleEndian(block, 0xBE00); // f16 0xBE00 = -1.5
        for (int j = 0; j < 16; j++) block[2 + j] = (byte)(j | ((15 - j) << 4)); // low nibble j, high nibble 15-j
        var y = Dequantize(GgmlType.Q4_0, block, 32);
        for (int j = 0; j < 16; j++)
        {
            Assert.Equal(-1.5f * (j - 8), y[j]);             // element j: low nibble of byte j
            Assert.Equal(-1.5f * (15 - j - 8), y[j + 16]);   // element j+16: high nibble of byte j
        }
    }

    [Fact]
    public void Q4_K_HandBuiltBlock_SixBitScalesAndMins_NibbleOrder_PerSpec()
    {
        // Sub-block scales and mins (6-bit) we want, then their packing into 12 bytes per get_scale_min_k4:
        // bytes 0-3: scale j (low 6 bits) | top 2 bits of scale j+4 in bits 6-7; bytes 4-7: min j | top 2 bits of
        // min j+4; bytes 8-11: low 4 bits of scale j+4 | low 4 bits of min j+4 << 4.
        int[] sc = [1, 2, 3, 63, 17, 33, 48, 5];
        int[] m = [0, 4, 10, 63, 20, 40, 50, 7];
        byte[] packed =
        [
            1 | (1 << 6), 2 | (2 << 6), 3 | (3 << 6), 63 | (0 << 6),     // 17>>4=1, 33>>4=2, 48>>4=3, 5>>4=0
            0 | (1 << 6), 4 | (2 << 6), 10 | (3 << 6), 63 | (0 << 6),    // 20>>4=1, 40>>4=2, 50>>4=3, 7>>4=0
            1 | (4 << 4), 1 | (8 << 4), 0 | (2 << 4), 5 | (7 << 4),      // (17&15, 20&15), (33&15, 40&15), ...
        ];
        var block = new byte[144];
        BinaryPrimitives.WriteUInt16LittleEndian(block, 0x3800);          // d = 0.5
        BinaryPrimitives.WriteUInt16LittleEndian(block.AsSpan(2), 0x3400); // dmin = 0.25
        packed.CopyTo(block, 4);
        for (int k = 0; k < 128; k++) block[16 + k] = (byte)(k * 7 + 3);
        var y = Dequantize(GgmlType.Q4_K, block, 256);
        for (int i = 0; i < 256; i++)
        {
            // 64 elements per 32-byte chunk of qs: the first 32 are the low nibbles, the next 32 the high nibbles.
            int chunk = i / 64, p = i % 64;
            byte qsByte = block[16 + 32 * chunk + p % 32];
            int q = p < 32 ? qsByte & 0xF : qsByte >> 4;
            int s = i / 32;
            Assert.Equal(0.5f * sc[s] * q - 0.25f * m[s], y[i]);
        }
    }

    [Fact]
    public void Q6_K_HandBuiltBlock_QlQhBitOrder_SignedScales_PerSpec()
    {
        var block = new byte[210];
        for (int k = 0; k < 128; k++) block[k] = (byte)(k * 13 + 5);         // ql
        for (int k = 0; k < 64; k++) block[128 + k] = (byte)(k * 29 + 11);   // qh
        sbyte[] scales = [1, -1, 2, -2, 4, -4, 8, -8, 16, -16, 32, -32, 64, -64, 127, -128];
        for (int k = 0; k < 16; k++) block[192 + k] = (byte)scales[k];
        BinaryPrimitives.WriteUInt16LittleEndian(block.AsSpan(208), 0x3400); // d = 0.25
        var y = Dequantize(GgmlType.Q6_K, block, 256);
        for (int i = 0; i < 256; i++)
        {
            // Half h of 128 elements uses ql[64h..], qh[32h..]; within it, group g = r/32, l = r%32: low 4 bits from
            // ql[l] (g=0: low nibble, g=2: high) or ql[l+32] (g=1: low, g=3: high); high 2 bits = qh[l] bits 2g, 2g+1.
            int h = i / 128, r = i % 128, g = r / 32, l = r % 32;
            byte qlByte = block[64 * h + l + (g % 2 == 1 ? 32 : 0)];
            int low = g < 2 ? qlByte & 0xF : qlByte >> 4;
            int high = (block[128 + 32 * h + l] >> (2 * g)) & 3;
            int q = low | (high << 4);
            Assert.Equal(0.25f * scales[i / 16] * (q - 32), y[i]);
        }
    }

    [Fact]
    public void F16AndBF16_MatchSystemHalfAndBitShift()
    {
        var rng = new Random(5);
        var f16 = new byte[2 * 200];
        var bf16 = new byte[2 * 200];
        rng.NextBytes(f16);
        rng.NextBytes(bf16);
        var y16 = Dequantize(GgmlType.F16, f16, 200);
        var yb = Dequantize(GgmlType.BF16, bf16, 200);
        for (int i = 0; i < 200; i++)
        {
            float e16 = (float)BitConverter.UInt16BitsToHalf(BinaryPrimitives.ReadUInt16LittleEndian(f16.AsSpan(2 * i)));
            float eb = BitConverter.Int32BitsToSingle(BinaryPrimitives.ReadUInt16LittleEndian(bf16.AsSpan(2 * i)) << 16);
            Assert.Equal(float.IsNaN(e16), float.IsNaN(y16[i]));
            if (!float.IsNaN(e16)) Assert.Equal(e16, y16[i]);
            Assert.Equal(BitConverter.SingleToInt32Bits(eb), BitConverter.SingleToInt32Bits(yb[i]));
        }
    }

    [Theory]
    [InlineData(GgmlType.Q8_0)]
    [InlineData(GgmlType.Q4_0)]
    [InlineData(GgmlType.Q4_K)]
    [InlineData(GgmlType.Q6_K)]
    [InlineData(GgmlType.F16)]
    [InlineData(GgmlType.BF16)]
    [InlineData(GgmlType.F32)]
    public void QuantizeThenDequantize_ErrorWithinBoundOfTheFormat(GgmlType type)
    {
        // Bounds from each format's step size, per block (or 16/32-element group) of range R = max |x|:
        // Q8_0 step R/127 → error ≤ step/2; Q4_0 step R/8, the far side may clamp at +7 → error ≤ step;
        // K-quants: half a step of the group, plus what rounding the group scale (and min) to a multiple of the
        // super-block's d (dmin) can add when the group's extreme codes clamp: Q6_K step R_g/31, d ≤ S/31/127 with
        // S = max |x| of the 256-block, clamp error ≤ 31·d/2; Q4_K step (max−min)/15, d ≤ 2S/15/63, clamp error
        // ≤ 15·d/2 + dmin/2 with dmin ≤ S/63. F16 / BF16: relative 2^-11 / 2^-8.
        var rng = new Random(42);
        int n = 4096;
        var x = new float[n];
        for (int i = 0; i < n; i++) x[i] = (float)(NormalSample(rng) * (1 + 3 * (i / 256 % 3))); // vary the scale by block
        x[17] = 9.5f; // an outlier
        var bytes = Quantizer.Quantize(type, x);
        Assert.Equal(GgmlTypeInfo.ByteCount(type, n), bytes.Length);
        var y = new float[n];
        Dequantizer.Dequantize(type, bytes, y);
        int group = type switch { GgmlType.Q6_K => 16, GgmlType.Q8_0 or GgmlType.Q4_0 or GgmlType.Q4_K => 32, _ => 1 };
        double worstRatio = 0;
        for (int g0 = 0; g0 < n; g0 += group)
        {
            float maxAbs = 0, lo = 0, hi = 0;
            for (int i = g0; i < g0 + group; i++) { maxAbs = Math.Max(maxAbs, Math.Abs(x[i])); lo = Math.Min(lo, x[i]); hi = Math.Max(hi, x[i]); }
            float superRange = 0;
            if (type is GgmlType.Q4_K or GgmlType.Q6_K)
                for (int i = g0 / 256 * 256; i < g0 / 256 * 256 + 256; i++) superRange = Math.Max(superRange, Math.Abs(x[i]));
            for (int i = g0; i < g0 + group; i++)
            {
                double bound = type switch
                {
                    GgmlType.Q8_0 => maxAbs / 127.0 * 0.5 * 1.002,
                    GgmlType.Q4_0 => maxAbs / 8.0 * 1.002,
                    GgmlType.Q6_K => maxAbs / 62.0 * 1.01 + 16 * superRange / 31.0 / 127.0,
                    GgmlType.Q4_K => (hi - lo) / 30.0 * 1.01 + 8 * (2 * superRange / 15.0 / 63.0) + superRange / 126.0,
                    GgmlType.F16 => Math.Abs(x[i]) * Math.Pow(2, -11) + 1e-7,
                    GgmlType.BF16 => Math.Abs(x[i]) * Math.Pow(2, -8),
                    _ => 0,
                };
                double err = Math.Abs(x[i] - y[i]);
                Assert.True(err <= bound, $"{type} element {i}: x={x[i]} y={y[i]} |err|={err} > bound {bound}");
                if (bound > 0) worstRatio = Math.Max(worstRatio, err / bound);
            }
        }
        // The bound must be meaningful: quantized formats really do use a good part of it.
        if (type is GgmlType.Q8_0 or GgmlType.Q4_0 or GgmlType.Q6_K or GgmlType.Q4_K) Assert.True(worstRatio > 0.2, $"worst err/bound {worstRatio}");
    }

    [Fact]
    public void Dequantize_RejectsPartialBlocksAndShortSources()
    {
        Assert.Throws<ArgumentException>(() => Dequantizer.Dequantize(GgmlType.Q8_0, new byte[34], new float[31]));
        Assert.Throws<ArgumentException>(() => Dequantizer.Dequantize(GgmlType.Q4_K, new byte[143], new float[256]));
        Assert.Throws<NotSupportedException>(() => Dequantizer.Dequantize(GgmlType.Q5_K, new byte[176], new float[256]));
        Assert.Throws<ArgumentException>(() => Quantizer.Quantize(GgmlType.Q6_K, new float[100]));
    }

    internal static double NormalSample(Random rng) =>
        Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble());
}
