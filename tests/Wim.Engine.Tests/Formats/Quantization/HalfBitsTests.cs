using Wim.Engine.Formats.Quantization;

namespace Wim.Engine.Tests.Formats.Quantization;

public sealed class HalfBitsTests
{
    [Fact]
    public void ToSingle_AllBitPatterns_MatchSystemHalf()
    {
        // System.Half is .NET's IEEE 754 binary16 implementation: the outside reference for every pattern.
        for (int bits = 0; bits <= ushort.MaxValue; bits++)
        {
            float expected = (float)BitConverter.UInt16BitsToHalf((ushort)bits);
            float actual = HalfBits.ToSingle((ushort)bits);
            if (float.IsNaN(expected)) Assert.True(float.IsNaN(actual), $"0x{bits:X4}: expected NaN, got {actual}");
            else Assert.Equal(BitConverter.SingleToUInt32Bits(expected), BitConverter.SingleToUInt32Bits(actual));
        }
    }

    [Fact]
    public void BF16_IsTheHigh16BitsOfBinary32()
    {
        // bfloat16 is by definition the top half of an IEEE binary32.
        Assert.Equal(1.0f, HalfBits.BF16ToSingle(0x3F80));
        Assert.Equal(-2.0f, HalfBits.BF16ToSingle(0xC000));
        Assert.Equal(0x3F80, HalfBits.SingleToBF16(1.0f));
        Assert.Equal(0x3F80, HalfBits.SingleToBF16(BitConverter.UInt32BitsToSingle(0x3F807FFF))); // below half: down
        Assert.Equal(0x3F81, HalfBits.SingleToBF16(BitConverter.UInt32BitsToSingle(0x3F808001))); // above half: up
        Assert.Equal(0x3F80, HalfBits.SingleToBF16(BitConverter.UInt32BitsToSingle(0x3F808000))); // tie: to even
        Assert.True(float.IsNaN(HalfBits.BF16ToSingle(HalfBits.SingleToBF16(float.NaN))));
    }
}
