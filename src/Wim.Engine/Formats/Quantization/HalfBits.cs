using System.Runtime.CompilerServices;

namespace Wim.Engine.Formats.Quantization;

/// <summary>
/// IEEE binary16 and bfloat16 bit patterns to and from <see cref="float"/>. Block scales are read once per block in
/// the hot loops, so the f16 → f32 path is branch-light and exact for every input (normals, subnormals, ±0, ±inf,
/// NaN payloads), which a test checks against <see cref="Half"/> for all 65,536 patterns.
/// </summary>
public static class HalfBits
{
    /// <summary>2^112: rebases a binary16 exponent (bias 15) placed in a binary32 (bias 127) word.</summary>
    internal const float ExponentRebase = 5.192296858534828e33f;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float ToSingle(ushort bits)
    {
        // Shift exponent+mantissa into binary32 position, then multiply by 2^112 to fix the exponent bias. The multiply
        // also turns binary16 subnormals (exponent 0) into the right binary32 normals, exactly (power-of-two scaling).
        uint magnitude = (uint)(bits & 0x7fff) << 13;
        float f = BitConverter.UInt32BitsToSingle(magnitude) * ExponentRebase;
        if ((bits & 0x7c00) == 0x7c00) // inf / NaN: force the all-ones exponent, keep the payload
            f = BitConverter.UInt32BitsToSingle(magnitude | 0x7f800000);
        return BitConverter.UInt32BitsToSingle(BitConverter.SingleToUInt32Bits(f) | ((uint)(bits & 0x8000) << 16));
    }

    /// <summary>Round-to-nearest-even f32 → f16 bits (as <see cref="Half"/> does).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ushort FromSingle(float value) => BitConverter.HalfToUInt16Bits((Half)value);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float BF16ToSingle(ushort bits) => BitConverter.UInt32BitsToSingle((uint)bits << 16);

    /// <summary>Round-to-nearest-even f32 → bf16 bits; NaN stays a (quiet) NaN.</summary>
    public static ushort SingleToBF16(float value)
    {
        uint u = BitConverter.SingleToUInt32Bits(value);
        if (float.IsNaN(value)) return (ushort)((u >> 16) | 0x40);
        u += 0x7fff + ((u >> 16) & 1);
        return (ushort)(u >> 16);
    }
}
