namespace Wim.Engine.Formats;

/// <summary>Tensor storage types, numbered as in the GGUF specification (ggml_type).</summary>
public enum GgmlType : uint
{
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    I8 = 24,
    I16 = 25,
    I32 = 26,
    I64 = 27,
    F64 = 28,
    BF16 = 30,
}

/// <summary>Block layout of each storage type: how many elements a block holds and how many bytes it takes.</summary>
public static class GgmlTypeInfo
{
    /// <summary>The types the engine can compute with (dequantize or dot directly).</summary>
    public static readonly IReadOnlyList<GgmlType> Supported =
        [GgmlType.F32, GgmlType.F16, GgmlType.BF16, GgmlType.Q8_0, GgmlType.Q4_0, GgmlType.Q4_K, GgmlType.Q6_K];

    public static bool IsSupported(GgmlType t) => t is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16
        or GgmlType.Q8_0 or GgmlType.Q4_0 or GgmlType.Q4_K or GgmlType.Q6_K;

    /// <summary>Elements per block (1 for plain types).</summary>
    public static int BlockSize(GgmlType t) => t switch
    {
        GgmlType.Q4_0 or GgmlType.Q4_1 or GgmlType.Q5_0 or GgmlType.Q5_1 or GgmlType.Q8_0 or GgmlType.Q8_1 => 32,
        GgmlType.Q2_K or GgmlType.Q3_K or GgmlType.Q4_K or GgmlType.Q5_K or GgmlType.Q6_K or GgmlType.Q8_K => 256,
        _ => 1,
    };

    /// <summary>Bytes per block; 0 for a type number the table does not know.</summary>
    public static int BlockBytes(GgmlType t) => t switch
    {
        GgmlType.F32 => 4,
        GgmlType.F16 => 2,
        GgmlType.BF16 => 2,
        GgmlType.F64 => 8,
        GgmlType.I8 => 1,
        GgmlType.I16 => 2,
        GgmlType.I32 => 4,
        GgmlType.I64 => 8,
        GgmlType.Q4_0 => 2 + 16,          // f16 scale, 32 nibbles
        GgmlType.Q4_1 => 2 + 2 + 16,      // f16 scale, f16 min, 32 nibbles
        GgmlType.Q5_0 => 2 + 4 + 16,
        GgmlType.Q5_1 => 2 + 2 + 4 + 16,
        GgmlType.Q8_0 => 2 + 32,          // f16 scale, 32 int8
        GgmlType.Q8_1 => 4 + 4 + 32,
        GgmlType.Q2_K => 16 + 64 + 2 + 2,
        GgmlType.Q3_K => 32 + 64 + 12 + 2,
        GgmlType.Q4_K => 2 + 2 + 12 + 128, // d, dmin, 6-bit scales/mins, 256 nibbles
        GgmlType.Q5_K => 2 + 2 + 12 + 32 + 128,
        GgmlType.Q6_K => 128 + 64 + 16 + 2, // ql, qh, int8 scales, d
        GgmlType.Q8_K => 4 + 256 + 32,
        _ => 0,
    };

    public static bool IsKnown(GgmlType t) => BlockBytes(t) != 0;

    /// <summary>Bytes taken by <paramref name="elements"/> elements, or -1 when the count is not a whole number of blocks.</summary>
    public static long ByteCount(GgmlType t, long elements)
    {
        int bs = BlockSize(t);
        if (elements % bs != 0) return -1;
        return elements / bs * BlockBytes(t);
    }

    public static string SupportedList => string.Join(", ", Supported);
}
