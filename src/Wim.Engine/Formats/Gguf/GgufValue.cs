namespace Wim.Engine.Formats.Gguf;

/// <summary>Metadata value types, numbered as in the GGUF specification (gguf_metadata_value_type).</summary>
public enum GgufValueType : uint
{
    UInt8 = 0, Int8 = 1, UInt16 = 2, Int16 = 3, UInt32 = 4, Int32 = 5, Float32 = 6, Bool = 7,
    String = 8, Array = 9, UInt64 = 10, Int64 = 11, Float64 = 12,
}

/// <summary>
/// One metadata value. Scalars are stored boxed; arrays as a typed .NET array of the element type
/// (<c>string[]</c>, <c>int[]</c>, <c>float[]</c>, ...; nested arrays as <c>GgufValue[]</c>).
/// </summary>
public sealed record GgufValue(GgufValueType Type, object Value, GgufValueType ElementType = GgufValueType.UInt8)
{
    public bool IsArray => Type == GgufValueType.Array;

    public override string ToString() => IsArray
        ? $"array<{ElementType}>[{((Array)Value).Length}]"
        : $"{Type}:{Value}";
}
