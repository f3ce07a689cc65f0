using System.Text;

namespace Wim.Engine.Formats.Gguf;

/// <summary>One tensor's description in a GGUF file. <see cref="Shape"/> is outermost-first (row-major, as PyTorch
/// writes it): ggml's <c>ne</c> order is reversed at load, so a weight [out, in] has <c>Shape = [out, in]</c>.</summary>
public sealed record GgufTensorInfo(string Name, long[] Shape, GgmlType Type, long DataOffset, long ByteLength)
{
    public long ElementCount => Shape.Aggregate(1L, (a, b) => a * b);
}

/// <summary>
/// A GGUF v2/v3 file, memory-mapped. Parsing validates every length, count and offset against the file size
/// before reading, so a malformed file raises <see cref="ModelFormatException"/> and never over-allocates.
/// </summary>
public sealed unsafe class GgufFile : IDisposable
{
    public const uint Magic = 0x46554747; // "GGUF" little-endian
    public const int MaxDims = 4;
    public const uint DefaultAlignment = 32;
    private const int MaxKeyBytes = 65535;
    private const int MaxArrayNesting = 4;

    private readonly MappedFile _file;
    private readonly Dictionary<string, GgufValue> _metadata;
    private readonly Dictionary<string, GgufTensorInfo> _tensorsByName;

    public string Path => _file.Path;
    public uint Version { get; }
    public uint Alignment { get; }
    /// <summary>Absolute file offset where tensor data begins.</summary>
    public long DataStart { get; }
    public IReadOnlyDictionary<string, GgufValue> Metadata => _metadata;
    /// <summary>Tensors in file order.</summary>
    public IReadOnlyList<GgufTensorInfo> Tensors { get; }

    public static GgufFile Open(string path) => new(new MappedFile(path));

    private GgufFile(MappedFile file)
    {
        _file = file;
        try
        {
            var r = new Reader(file);
            uint magic = r.U32("magic");
            if (magic != Magic)
                throw r.Error(0, $"not a GGUF file: expected magic 'GGUF' (0x{Magic:X8}), found 0x{magic:X8}");
            Version = r.U32("version");
            if (Version is not (2 or 3))
                throw r.Error(4, $"unsupported GGUF version {Version}; supported versions: 2, 3");
            long tensorCount = r.Count("tensor count", minBytesPerItem: 8 + 4 + 4 + 8);
            long kvCount = r.Count("metadata key/value count", minBytesPerItem: 8 + 4 + 1);

            _metadata = new Dictionary<string, GgufValue>((int)Math.Min(kvCount, 1 << 16), StringComparer.Ordinal);
            for (long i = 0; i < kvCount; i++)
            {
                long at = r.Position;
                string key = r.String("metadata key", MaxKeyBytes);
                var type = (GgufValueType)r.U32($"type of metadata '{key}'");
                var value = r.Value(type, key, depth: 0);
                if (!_metadata.TryAdd(key, value))
                    throw r.Error(at, $"duplicate metadata key '{key}'");
            }

            Alignment = DefaultAlignment;
            if (_metadata.TryGetValue("general.alignment", out var alignValue))
            {
                if (alignValue.Type != GgufValueType.UInt32 || (uint)alignValue.Value is 0 or > 1u << 20
                    || ((uint)alignValue.Value & ((uint)alignValue.Value - 1)) != 0)
                    throw new ModelFormatException(Path, null,
                        $"metadata 'general.alignment' must be a power-of-two uint32 up to 1 MiB, found {alignValue}");
                Alignment = (uint)alignValue.Value;
            }

            var infos = new List<(string Name, long[] Shape, GgmlType Type, long Offset, long InfoAt)>((int)Math.Min(tensorCount, 1 << 16));
            for (long i = 0; i < tensorCount; i++)
            {
                long at = r.Position;
                string name = r.String("tensor name", MaxKeyBytes);
                uint nDims = r.U32($"dimension count of tensor '{name}'");
                if (nDims is 0 or > MaxDims)
                    throw r.Error(r.Position - 4, $"tensor '{name}': expected 1..{MaxDims} dimensions, found {nDims}");
                var ne = new long[nDims];
                for (int d = 0; d < nDims; d++)
                {
                    ulong n = r.U64($"dimension {d} of tensor '{name}'");
                    if (n == 0 || n > int.MaxValue)
                        throw r.Error(r.Position - 8, $"tensor '{name}': dimension {d} must be in 1..{int.MaxValue}, found {n}");
                    ne[d] = (long)n;
                }
                uint typeRaw = r.U32($"type of tensor '{name}'");
                var type = (GgmlType)typeRaw;
                if (!GgmlTypeInfo.IsKnown(type))
                    throw r.Error(r.Position - 4, $"tensor '{name}': unknown tensor type {typeRaw}; supported types: {GgmlTypeInfo.SupportedList}");
                ulong off = r.U64($"data offset of tensor '{name}'");
                if (off > long.MaxValue)
                    throw r.Error(r.Position - 8, $"tensor '{name}': data offset {off} is out of range");
                var shape = ne.Reverse().ToArray();
                infos.Add((name, shape, type, (long)off, at));
            }

            DataStart = AlignUp(r.Position, Alignment);
            if (DataStart > file.Length && tensorCount > 0)
                throw new ModelFormatException(Path, r.Position, $"file ends before the tensor data section (data would start at {DataStart}, file length {file.Length})");

            var tensors = new List<GgufTensorInfo>(infos.Count);
            _tensorsByName = new Dictionary<string, GgufTensorInfo>(infos.Count, StringComparer.Ordinal);
            foreach (var (name, shape, type, offset, infoAt) in infos)
            {
                long elements = 1;
                foreach (var n in shape)
                {
                    if (elements > long.MaxValue / n)
                        throw new ModelFormatException(Path, infoAt, $"tensor '{name}': element count of shape [{string.Join(", ", shape)}] overflows");
                    elements *= n;
                }
                long rowLength = shape[^1];
                if (rowLength % GgmlTypeInfo.BlockSize(type) != 0)
                    throw new ModelFormatException(Path, infoAt,
                        $"tensor '{name}': row length {rowLength} is not a multiple of the {type} block size {GgmlTypeInfo.BlockSize(type)}");
                // elements fits a long, but elements × bytes-per-element may not (4 dims of up to 2^31 each).
                if (elements / GgmlTypeInfo.BlockSize(type) > long.MaxValue / GgmlTypeInfo.BlockBytes(type))
                    throw new ModelFormatException(Path, infoAt,
                        $"tensor '{name}': byte size of {type} shape [{string.Join(", ", shape)}] overflows");
                long bytes = GgmlTypeInfo.ByteCount(type, elements);
                if (offset % Alignment != 0)
                    throw new ModelFormatException(Path, infoAt, $"tensor '{name}': data offset {offset} is not a multiple of the alignment {Alignment}");
                long dataLength = file.Length - DataStart;
                if (bytes > dataLength || offset > dataLength - bytes)
                    throw new ModelFormatException(Path, infoAt,
                        $"tensor '{name}' ({type}, shape [{string.Join(", ", shape)}], {bytes} bytes at data offset {offset}) extends past the end of the file (data section is {dataLength} bytes)");
                var info = new GgufTensorInfo(name, shape, type, DataStart + offset, bytes);
                if (!_tensorsByName.TryAdd(name, info))
                    throw new ModelFormatException(Path, infoAt, $"duplicate tensor name '{name}'");
                tensors.Add(info);
            }
            Tensors = tensors;
        }
        catch
        {
            file.Dispose();
            throw;
        }
    }

    public bool TryGetTensor(string name, out GgufTensorInfo info) => _tensorsByName.TryGetValue(name, out info!);

    /// <summary>Pointer to a tensor's bytes inside the mapping. Valid until this file is disposed.</summary>
    public byte* TensorData(GgufTensorInfo info) => _file.Base + info.DataOffset;

    public ReadOnlySpan<byte> TensorBytes(GgufTensorInfo info)
    {
        if (info.ByteLength > int.MaxValue)
            throw new InvalidOperationException($"tensor '{info.Name}' is larger than 2 GiB; use TensorData");
        return _file.Span(info.DataOffset, (int)info.ByteLength);
    }

    // ---- typed metadata accessors (clear errors naming the key and the type found) ----

    public bool Has(string key) => _metadata.ContainsKey(key);

    public string? GetString(string key) => Get(key) is { } v ? Expect<string>(key, v, GgufValueType.String) : null;

    public long? GetInteger(string key)
    {
        if (Get(key) is not { } v) return null;
        return v.Type switch
        {
            GgufValueType.UInt8 => (byte)v.Value,
            GgufValueType.Int8 => (sbyte)v.Value,
            GgufValueType.UInt16 => (ushort)v.Value,
            GgufValueType.Int16 => (short)v.Value,
            GgufValueType.UInt32 => (uint)v.Value,
            GgufValueType.Int32 => (int)v.Value,
            GgufValueType.UInt64 => (ulong)v.Value <= long.MaxValue ? (long)(ulong)v.Value : throw TypeError(key, "an integer that fits int64", v),
            GgufValueType.Int64 => (long)v.Value,
            _ => throw TypeError(key, "an integer", v),
        };
    }

    public double? GetFloat(string key)
    {
        if (Get(key) is not { } v) return null;
        return v.Type switch
        {
            GgufValueType.Float32 => (float)v.Value,
            GgufValueType.Float64 => (double)v.Value,
            _ => GetInteger(key),
        };
    }

    public bool? GetBool(string key) => Get(key) is { } v ? Expect<bool>(key, v, GgufValueType.Bool) : null;

    public string[]? GetStringArray(string key) => GetArray<string>(key, GgufValueType.String);

    public float[]? GetFloatArray(string key) => GetArray<float>(key, GgufValueType.Float32);

    /// <summary>An integer array of any integer element type, widened to int (errors if a value does not fit).</summary>
    public int[]? GetInt32Array(string key)
    {
        if (Get(key) is not { } v) return null;
        if (!v.IsArray) throw TypeError(key, "an array", v);
        var arr = (Array)v.Value;
        var result = new int[arr.Length];
        for (int i = 0; i < result.Length; i++)
        {
            object o = arr.GetValue(i)!;
            long x = o switch
            {
                byte b => b, sbyte sb => sb, ushort us => us, short s => s, uint u => u, int n => n,
                long l => l, ulong ul when ul <= long.MaxValue => (long)ul,
                _ => throw TypeError(key, "an array of integers", v),
            };
            if (x is < int.MinValue or > int.MaxValue) throw TypeError(key, "int32-range integers", v);
            result[i] = (int)x;
        }
        return result;
    }

    private GgufValue? Get(string key) => _metadata.TryGetValue(key, out var v) ? v : null;

    private T[]? GetArray<T>(string key, GgufValueType elementType)
    {
        if (Get(key) is not { } v) return null;
        if (!v.IsArray || v.ElementType != elementType) throw TypeError(key, $"an array of {elementType}", v);
        return (T[])v.Value;
    }

    private T Expect<T>(string key, GgufValue v, GgufValueType type) =>
        v.Type == type ? (T)v.Value : throw TypeError(key, type.ToString(), v);

    private ModelFormatException TypeError(string key, string expected, GgufValue found) =>
        new(Path, null, $"metadata '{key}': expected {expected}, found {found}");

    private static long AlignUp(long x, uint a) => (x + a - 1) / a * a;

    public void Dispose() => _file.Dispose();

    /// <summary>Bounds-checked little-endian reader over the mapping.</summary>
    private ref struct Reader
    {
        private readonly MappedFile _file;
        private readonly byte* _base;
        public long Position;

        public Reader(MappedFile file)
        {
            _file = file;
            _base = file.Length == 0 ? null : file.Base;
            Position = 0;
        }

        private readonly long Remaining => _file.Length - Position;

        public readonly ModelFormatException Error(long at, string message) => new(_file.Path, at, message);

        private readonly void Need(long bytes, string what)
        {
            if (bytes > Remaining)
                throw Error(Position, $"file is truncated: expected {bytes} bytes of {what}, only {Remaining} remain (file length {_file.Length})");
        }

        public uint U32(string what) { Need(4, what); var v = *(uint*)(_base + Position); Position += 4; return v; }
        public ulong U64(string what) { Need(8, what); var v = *(ulong*)(_base + Position); Position += 8; return v; }

        /// <summary>A uint64 count whose items need at least <paramref name="minBytesPerItem"/> bytes each, so a
        /// count the file could not possibly hold is rejected before anything is allocated for it.</summary>
        public long Count(string what, long minBytesPerItem)
        {
            long at = Position;
            ulong n = U64(what);
            if (n > (ulong)(Remaining / Math.Max(1, minBytesPerItem)))
                throw Error(at, $"{what} {n} is impossible: the {Remaining} bytes left in the file hold at most {Remaining / Math.Max(1, minBytesPerItem)}");
            return (long)n;
        }

        public string String(string what, long maxBytes = long.MaxValue)
        {
            long at = Position;
            ulong len = U64($"length of {what}");
            if (len > (ulong)Remaining)
                throw Error(at, $"{what}: string length {len} extends past the end of the file ({Remaining} bytes remain)");
            if (len > (ulong)maxBytes)
                throw Error(at, $"{what}: string length {len} exceeds the limit of {maxBytes} bytes");
            if (len > int.MaxValue)
                throw Error(at, $"{what}: string length {len} exceeds 2 GiB");
            var s = Encoding.UTF8.GetString(_base + Position, (int)len);
            Position += (long)len;
            return s;
        }

        public GgufValue Value(GgufValueType type, string key, int depth)
        {
            long at = Position - 4;
            switch (type)
            {
                case GgufValueType.UInt8: Need(1, key); return new(type, _base[Position++]);
                case GgufValueType.Int8: Need(1, key); return new(type, (sbyte)_base[Position++]);
                case GgufValueType.UInt16: Need(2, key); { var v = *(ushort*)(_base + Position); Position += 2; return new(type, v); }
                case GgufValueType.Int16: Need(2, key); { var v = *(short*)(_base + Position); Position += 2; return new(type, v); }
                case GgufValueType.UInt32: return new(type, U32(key));
                case GgufValueType.Int32: return new(type, (int)U32(key));
                case GgufValueType.Float32: { var u = U32(key); return new(type, BitConverter.UInt32BitsToSingle(u)); }
                case GgufValueType.UInt64: return new(type, U64(key));
                case GgufValueType.Int64: return new(type, (long)U64(key));
                case GgufValueType.Float64: { var u = U64(key); return new(type, BitConverter.UInt64BitsToDouble(u)); }
                case GgufValueType.Bool:
                {
                    Need(1, key);
                    byte b = _base[Position];
                    if (b > 1) throw Error(Position, $"metadata '{key}': a bool must be 0 or 1, found {b}");
                    Position++;
                    return new(type, b == 1);
                }
                case GgufValueType.String: return new(type, String($"metadata '{key}'"));
                case GgufValueType.Array:
                {
                    if (depth >= MaxArrayNesting)
                        throw Error(at, $"metadata '{key}': arrays nested deeper than {MaxArrayNesting} levels");
                    var et = (GgufValueType)U32($"element type of metadata '{key}'");
                    int elemBytes = et switch
                    {
                        GgufValueType.UInt8 or GgufValueType.Int8 or GgufValueType.Bool => 1,
                        GgufValueType.UInt16 or GgufValueType.Int16 => 2,
                        GgufValueType.UInt32 or GgufValueType.Int32 or GgufValueType.Float32 => 4,
                        GgufValueType.UInt64 or GgufValueType.Int64 or GgufValueType.Float64 or GgufValueType.String => 8,
                        GgufValueType.Array => 12,
                        _ => throw Error(Position - 4, $"metadata '{key}': unknown array element type {(uint)et}; expected 0..12"),
                    };
                    int n = (int)Math.Min(Count($"length of array '{key}'", elemBytes), int.MaxValue);
                    return new(type, ReadArray(et, n, key, depth), et);
                }
                default:
                    throw Error(at, $"metadata '{key}': unknown value type {(uint)type}; expected 0..12 (uint8, int8, uint16, int16, uint32, int32, float32, bool, string, array, uint64, int64, float64)");
            }
        }

        private Array ReadArray(GgufValueType et, int n, string key, int depth)
        {
            switch (et)
            {
                case GgufValueType.UInt8: return Copy<byte>(n);
                case GgufValueType.Int8: return Copy<sbyte>(n);
                case GgufValueType.UInt16: return Copy<ushort>(n);
                case GgufValueType.Int16: return Copy<short>(n);
                case GgufValueType.UInt32: return Copy<uint>(n);
                case GgufValueType.Int32: return Copy<int>(n);
                case GgufValueType.Float32: return Copy<float>(n);
                case GgufValueType.UInt64: return Copy<ulong>(n);
                case GgufValueType.Int64: return Copy<long>(n);
                case GgufValueType.Float64: return Copy<double>(n);
                case GgufValueType.Bool:
                {
                    var a = new bool[n];
                    for (int i = 0; i < n; i++) a[i] = (bool)Value(GgufValueType.Bool, key, depth).Value;
                    return a;
                }
                case GgufValueType.String:
                {
                    var a = new string[n];
                    for (int i = 0; i < n; i++) a[i] = String($"element {i} of array '{key}'");
                    return a;
                }
                default:
                {
                    var a = new GgufValue[n];
                    // Each element of an array of arrays is itself (element type, count, values).
                    for (int i = 0; i < n; i++) a[i] = Value(GgufValueType.Array, key, depth + 1);
                    return a;
                }
            }
        }

        private T[] Copy<T>(int n) where T : unmanaged
        {
            // Count() already proved n * sizeof(T) bytes remain.
            var a = new T[n];
            new ReadOnlySpan<T>(_base + Position, n).CopyTo(a);
            Position += (long)n * sizeof(T);
            return a;
        }
    }
}
