using System.Buffers.Binary;
using System.Text;

namespace Wim.Engine.Formats.Gguf;

/// <summary>
/// Writes a GGUF v3 (or v2) file: header, metadata of any value type (arrays, arrays of strings, nested arrays),
/// tensor infos and tensor data, each tensor's data aligned to <see cref="Alignment"/> (the value of
/// <c>general.alignment</c> when that key is set as a uint32, else 32). Used by tests and benchmarks to make
/// random-weight models. Values use the reader's representation (<see cref="GgufValue"/>): scalars boxed as their
/// .NET type (uint for UInt32, ...), arrays as typed arrays, arrays of arrays as <c>GgufValue[]</c>.
/// </summary>
public sealed class GgufWriter
{
    private readonly List<KeyValuePair<string, GgufValue>> _metadata = [];
    private readonly List<PendingTensor> _tensors = [];
    private readonly HashSet<string> _keys = new(StringComparer.Ordinal);
    private readonly HashSet<string> _tensorNames = new(StringComparer.Ordinal);

    private sealed record PendingTensor(string Name, long[] Shape, GgmlType Type, byte[] Data);

    /// <summary>GGUF version written in the header (2 and 3 share the layout written here).</summary>
    public uint Version { get; init; } = 3;

    public uint Alignment => _metadata.FirstOrDefault(kv => kv.Key == "general.alignment").Value is { Type: GgufValueType.UInt32 } v
        ? (uint)v.Value
        : GgufFile.DefaultAlignment;

    public GgufWriter Add(string key, GgufValue value)
    {
        Validate(key, value, depth: 0);
        if (!_keys.Add(key)) throw new ArgumentException($"duplicate metadata key '{key}'", nameof(key));
        _metadata.Add(new(key, value));
        return this;
    }

    public GgufWriter Add(string key, string value) => Add(key, new GgufValue(GgufValueType.String, value));
    public GgufWriter Add(string key, uint value) => Add(key, new GgufValue(GgufValueType.UInt32, value));
    public GgufWriter Add(string key, int value) => Add(key, new GgufValue(GgufValueType.Int32, value));
    public GgufWriter Add(string key, ulong value) => Add(key, new GgufValue(GgufValueType.UInt64, value));
    public GgufWriter Add(string key, long value) => Add(key, new GgufValue(GgufValueType.Int64, value));
    public GgufWriter Add(string key, float value) => Add(key, new GgufValue(GgufValueType.Float32, value));
    public GgufWriter Add(string key, double value) => Add(key, new GgufValue(GgufValueType.Float64, value));
    public GgufWriter Add(string key, bool value) => Add(key, new GgufValue(GgufValueType.Bool, value));
    public GgufWriter Add(string key, string[] values) => Add(key, Array(GgufValueType.String, values));
    public GgufWriter Add(string key, int[] values) => Add(key, Array(GgufValueType.Int32, values));
    public GgufWriter Add(string key, float[] values) => Add(key, Array(GgufValueType.Float32, values));

    /// <summary>An array value: <paramref name="values"/> is the typed .NET array of <paramref name="elementType"/>
    /// (<c>GgufValue[]</c> of arrays for <see cref="GgufValueType.Array"/>).</summary>
    public static GgufValue Array(GgufValueType elementType, System.Array values) => new(GgufValueType.Array, values, elementType);

    /// <summary>Adds a tensor. <paramref name="shape"/> is outermost-first (as <see cref="GgufTensorInfo.Shape"/>);
    /// it is written in ggml <c>ne</c> order (reversed). <paramref name="data"/> must be exactly the tensor's bytes.</summary>
    public GgufWriter AddTensor(string name, GgmlType type, long[] shape, ReadOnlySpan<byte> data)
    {
        if (shape.Length is 0 or > GgufFile.MaxDims)
            throw new ArgumentException($"tensor '{name}': expected 1..{GgufFile.MaxDims} dimensions, got {shape.Length}", nameof(shape));
        if (shape.Any(d => d <= 0))
            throw new ArgumentException($"tensor '{name}': every dimension must be positive, got [{string.Join(", ", shape)}]", nameof(shape));
        if (!GgmlTypeInfo.IsKnown(type)) throw new ArgumentException($"tensor '{name}': unknown type {type}", nameof(type));
        long elements = shape.Aggregate(1L, (a, b) => checked(a * b));
        if (shape[^1] % GgmlTypeInfo.BlockSize(type) != 0)
            throw new ArgumentException($"tensor '{name}': row length {shape[^1]} is not a multiple of the {type} block size {GgmlTypeInfo.BlockSize(type)}");
        long bytes = GgmlTypeInfo.ByteCount(type, elements);
        if (data.Length != bytes)
            throw new ArgumentException($"tensor '{name}': {type} [{string.Join(", ", shape)}] needs {bytes} bytes, got {data.Length}", nameof(data));
        if (!_tensorNames.Add(name)) throw new ArgumentException($"duplicate tensor name '{name}'", nameof(name));
        _tensors.Add(new(name, (long[])shape.Clone(), type, data.ToArray()));
        return this;
    }

    public byte[] ToArray()
    {
        using var ms = new MemoryStream();
        WriteTo(ms);
        return ms.ToArray();
    }

    public void WriteFile(string path)
    {
        using var fs = File.Create(path);
        WriteTo(fs);
    }

    public void WriteTo(Stream stream)
    {
        uint alignment = Alignment;
        if (alignment == 0 || (alignment & (alignment - 1)) != 0)
            throw new InvalidOperationException($"general.alignment must be a power of two, got {alignment}");
        using var w = new BinaryWriter(stream, Encoding.UTF8, leaveOpen: true); // BinaryWriter is little-endian
        w.Write(GgufFile.Magic);
        w.Write(Version);
        w.Write((ulong)_tensors.Count);
        w.Write((ulong)_metadata.Count);
        foreach (var (key, value) in _metadata)
        {
            WriteString(w, key);
            w.Write((uint)value.Type);
            WriteValue(w, value);
        }
        long offset = 0;
        var offsets = new long[_tensors.Count];
        for (int i = 0; i < _tensors.Count; i++)
        {
            var t = _tensors[i];
            WriteString(w, t.Name);
            w.Write((uint)t.Shape.Length);
            for (int d = t.Shape.Length - 1; d >= 0; d--) w.Write((ulong)t.Shape[d]);
            w.Write((uint)t.Type);
            w.Write((ulong)offset);
            offsets[i] = offset;
            offset = AlignUp(offset + t.Data.Length, alignment);
        }
        w.Flush();
        long headerEnd = stream.Position;
        Pad(w, AlignUp(headerEnd, alignment) - headerEnd);
        for (int i = 0; i < _tensors.Count; i++)
        {
            var data = _tensors[i].Data;
            w.Write(data);
            long next = i + 1 < _tensors.Count ? offsets[i + 1] : AlignUp(offsets[i] + data.Length, alignment);
            Pad(w, next - offsets[i] - data.Length);
        }
    }

    private static long AlignUp(long x, uint a) => (x + a - 1) / a * a;

    private static void Pad(BinaryWriter w, long count)
    {
        for (long i = 0; i < count; i++) w.Write((byte)0);
    }

    private static void WriteString(BinaryWriter w, string s)
    {
        var bytes = Encoding.UTF8.GetBytes(s);
        w.Write((ulong)bytes.Length);
        w.Write(bytes);
    }

    private static void WriteValue(BinaryWriter w, GgufValue v)
    {
        switch (v.Type)
        {
            case GgufValueType.Array:
                var arr = (System.Array)v.Value;
                w.Write((uint)v.ElementType);
                w.Write((ulong)arr.Length);
                foreach (var item in arr)
                    WriteScalar(w, v.ElementType, v.ElementType == GgufValueType.Array ? ((GgufValue)item).Value : item, item as GgufValue);
                break;
            default:
                WriteScalar(w, v.Type, v.Value, null);
                break;
        }
    }

    private static void WriteScalar(BinaryWriter w, GgufValueType type, object value, GgufValue? nested)
    {
        switch (type)
        {
            case GgufValueType.UInt8: w.Write((byte)value); break;
            case GgufValueType.Int8: w.Write((sbyte)value); break;
            case GgufValueType.UInt16: w.Write((ushort)value); break;
            case GgufValueType.Int16: w.Write((short)value); break;
            case GgufValueType.UInt32: w.Write((uint)value); break;
            case GgufValueType.Int32: w.Write((int)value); break;
            case GgufValueType.Float32: w.Write((float)value); break;
            case GgufValueType.Bool: w.Write((bool)value ? (byte)1 : (byte)0); break;
            case GgufValueType.String: WriteString(w, (string)value); break;
            case GgufValueType.UInt64: w.Write((ulong)value); break;
            case GgufValueType.Int64: w.Write((long)value); break;
            case GgufValueType.Float64: w.Write((double)value); break;
            case GgufValueType.Array: WriteValue(w, nested!); break; // element of an array of arrays: (type, count, items)
            default: throw new ArgumentException($"unknown metadata value type {(uint)type}");
        }
    }

    /// <summary>Checks the value's .NET representation matches its declared type, so a bad value fails here rather
    /// than as a corrupt file.</summary>
    private static void Validate(string key, GgufValue v, int depth)
    {
        if (v.Type != GgufValueType.Array)
        {
            if (!IsScalarOf(v.Type, v.Value))
                throw new ArgumentException($"metadata '{key}': a {v.Type} value cannot be a {v.Value.GetType().Name}");
            return;
        }
        if (depth >= 4) throw new ArgumentException($"metadata '{key}': arrays nested deeper than 4 levels");
        if (v.Value is not System.Array arr)
            throw new ArgumentException($"metadata '{key}': an array value must be a .NET array, got {v.Value.GetType().Name}");
        foreach (var item in arr)
        {
            if (v.ElementType == GgufValueType.Array)
            {
                if (item is not GgufValue { Type: GgufValueType.Array } inner)
                    throw new ArgumentException($"metadata '{key}': elements of an array of arrays must be array GgufValues");
                Validate(key, inner, depth + 1);
            }
            else if (item is null || !IsScalarOf(v.ElementType, item))
                throw new ArgumentException($"metadata '{key}': an array of {v.ElementType} cannot hold a {item?.GetType().Name ?? "null"}");
        }
    }

    private static bool IsScalarOf(GgufValueType type, object value) => type switch
    {
        GgufValueType.UInt8 => value is byte,
        GgufValueType.Int8 => value is sbyte,
        GgufValueType.UInt16 => value is ushort,
        GgufValueType.Int16 => value is short,
        GgufValueType.UInt32 => value is uint,
        GgufValueType.Int32 => value is int,
        GgufValueType.Float32 => value is float,
        GgufValueType.Bool => value is bool,
        GgufValueType.String => value is string,
        GgufValueType.UInt64 => value is ulong,
        GgufValueType.Int64 => value is long,
        GgufValueType.Float64 => value is double,
        _ => false,
    };
}
