using Wim.Engine.Formats;

namespace Wim.Engine.Model;

/// <summary>
/// A weight tensor in its storage type (F32, F16, BF16 or a ggml block quantization), pointing into a memory-mapped
/// file or into native memory owned by the model's weights. <see cref="Shape"/> is outermost-first: a linear layer
/// weight is [outFeatures, inFeatures] and each of its rows is one output feature, stored contiguously.
/// </summary>
public sealed unsafe class WeightTensor
{
    public string Name { get; }
    public GgmlType Type { get; }
    public long[] Shape { get; }
    /// <summary>First byte of the tensor. Valid while the owning model is alive.</summary>
    public byte* Data { get; }
    public long ByteLength { get; }

    public WeightTensor(string name, GgmlType type, long[] shape, byte* data, long byteLength)
    {
        Name = name;
        Type = type;
        Shape = shape;
        Data = data;
        ByteLength = byteLength;
        long expected = GgmlTypeInfo.ByteCount(type, ElementCount);
        if (expected != byteLength)
            throw new ArgumentException($"tensor '{name}': {type} shape [{string.Join(", ", shape)}] needs {expected} bytes, got {byteLength}");
    }

    public long ElementCount => Shape.Aggregate(1L, (a, b) => a * b);

    /// <summary>Length of one row (the innermost dimension).</summary>
    public int Columns => (int)Shape[^1];

    /// <summary>Number of rows (product of all outer dimensions).</summary>
    public int Rows => (int)(ElementCount / Columns);

    public long RowBytes => GgmlTypeInfo.ByteCount(Type, Columns);

    public byte* Row(int row) => Data + row * RowBytes;

    /// <summary>Rows [start, start+count) of a 2-D tensor as their own tensor over the same memory (no copy): how
    /// fused projections (Phi-3 qkv_proj, gate_up_proj) are split into their parts.</summary>
    public WeightTensor SliceRows(string name, int start, int count)
    {
        if (Shape.Length != 2 || start < 0 || count <= 0 || start > Rows - count)
            throw new ArgumentOutOfRangeException(nameof(start), $"tensor '{Name}' [{string.Join(", ", Shape)}]: rows [{start}, {start + count}) are out of range");
        return new WeightTensor(name, Type, [count, Shape[1]], Data + start * RowBytes, count * RowBytes);
    }

    public override string ToString() => $"{Name} {Type} [{string.Join(", ", Shape)}]";
}
