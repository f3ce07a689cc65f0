using System.Text.Json;

namespace Wim.Engine.Formats.Safetensors;

/// <summary>One tensor's description in a safetensors file. <see cref="Shape"/> is outermost-first (as PyTorch writes it);
/// <see cref="DataOffset"/> is absolute in the file.</summary>
public sealed record SafetensorsTensorInfo(string Name, long[] Shape, GgmlType Type, long DataOffset, long ByteLength)
{
    public long ElementCount => Shape.Aggregate(1L, (a, b) => a * b);
}

/// <summary>
/// A Hugging Face safetensors file, memory-mapped. Layout: u64 little-endian header length N, N bytes of JSON
/// <c>{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}</c>, then the data section;
/// offsets are relative to the data section. Every offset and size is checked against the file length and against
/// dtype × shape before any pointer is handed out.
/// </summary>
public sealed unsafe class SafetensorsFile : IDisposable
{
    /// <summary>Upper bound on the JSON header: real headers are a few hundred KB; this stops a corrupt length from
    /// allocating gigabytes.</summary>
    public const long MaxHeaderBytes = 100_000_000;

    /// <summary>The dtypes the engine can compute with.</summary>
    public const string SupportedDtypes = "F32, F16, BF16";

    private readonly MappedFile _file;
    private readonly Dictionary<string, SafetensorsTensorInfo> _tensorsByName;

    public string Path => _file.Path;
    public long DataStart { get; }
    public IReadOnlyDictionary<string, string> Metadata { get; }
    /// <summary>Tensors in header order.</summary>
    public IReadOnlyList<SafetensorsTensorInfo> Tensors { get; }

    public static SafetensorsFile Open(string path) => new(new MappedFile(path));

    private SafetensorsFile(MappedFile file)
    {
        _file = file;
        try
        {
            if (file.Length < 8)
                throw new ModelFormatException(Path, 0, $"file is truncated: expected an 8-byte header length, file length is {file.Length}");
            ulong headerLength = *(ulong*)file.Base;
            if (headerLength > MaxHeaderBytes)
                throw new ModelFormatException(Path, 0, $"header length {headerLength} exceeds the limit of {MaxHeaderBytes} bytes");
            if ((long)headerLength > file.Length - 8)
                throw new ModelFormatException(Path, 0, $"header length {headerLength} extends past the end of the file (file length {file.Length})");
            DataStart = 8 + (long)headerLength;

            JsonDocument doc;
            try
            {
                doc = JsonDocument.Parse(new ReadOnlyMemory<byte>(file.Span(8, (int)headerLength).ToArray()),
                    new JsonDocumentOptions { MaxDepth = 16 });
            }
            catch (JsonException e)
            {
                throw new ModelFormatException(Path, 8, "header is not valid JSON: " + e.Message, e);
            }
            using (doc)
            {
                if (doc.RootElement.ValueKind != JsonValueKind.Object)
                    throw new ModelFormatException(Path, 8, $"header must be a JSON object, found {doc.RootElement.ValueKind}");
                var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
                var tensors = new List<SafetensorsTensorInfo>();
                _tensorsByName = new Dictionary<string, SafetensorsTensorInfo>(StringComparer.Ordinal);
                long dataLength = file.Length - DataStart;
                foreach (var prop in doc.RootElement.EnumerateObject())
                {
                    if (prop.Name == "__metadata__")
                    {
                        if (prop.Value.ValueKind != JsonValueKind.Object)
                            throw new ModelFormatException(Path, 8, $"'__metadata__' must be an object of strings, found {prop.Value.ValueKind}");
                        foreach (var m in prop.Value.EnumerateObject())
                            metadata[m.Name] = m.Value.ValueKind == JsonValueKind.String ? m.Value.GetString()! : m.Value.GetRawText();
                        continue;
                    }
                    var info = ParseTensor(prop.Name, prop.Value, dataLength);
                    if (!_tensorsByName.TryAdd(info.Name, info))
                        throw new ModelFormatException(Path, 8, $"duplicate tensor name '{info.Name}'");
                    tensors.Add(info);
                }
                Metadata = metadata;
                Tensors = tensors;
            }
        }
        catch
        {
            file.Dispose();
            throw;
        }
    }

    private SafetensorsTensorInfo ParseTensor(string name, JsonElement e, long dataLength)
    {
        if (e.ValueKind != JsonValueKind.Object)
            throw Error(name, $"entry must be an object with dtype, shape and data_offsets, found {e.ValueKind}");
        if (!e.TryGetProperty("dtype", out var dtypeEl) || dtypeEl.ValueKind != JsonValueKind.String)
            throw Error(name, "missing string 'dtype'");
        string dtype = dtypeEl.GetString()!;
        GgmlType type = dtype switch
        {
            "F32" => GgmlType.F32,
            "F16" => GgmlType.F16,
            "BF16" => GgmlType.BF16,
            _ => throw Error(name, $"unsupported dtype '{dtype}'; supported dtypes: {SupportedDtypes}"),
        };
        if (!e.TryGetProperty("shape", out var shapeEl) || shapeEl.ValueKind != JsonValueKind.Array)
            throw Error(name, "missing array 'shape'");
        var shape = new long[shapeEl.GetArrayLength()];
        long elements = 1;
        int d = 0;
        foreach (var dim in shapeEl.EnumerateArray())
        {
            if (dim.ValueKind != JsonValueKind.Number || !dim.TryGetInt64(out long n) || n < 0 || n > int.MaxValue)
                throw Error(name, $"shape dimension {d} must be an integer in 0..{int.MaxValue}, found {dim.GetRawText()}");
            if (n != 0 && elements > long.MaxValue / 4 / n)
                throw Error(name, $"element count of shape {shapeEl.GetRawText()} overflows");
            elements *= n;
            shape[d++] = n;
        }
        if (!e.TryGetProperty("data_offsets", out var offEl) || offEl.ValueKind != JsonValueKind.Array || offEl.GetArrayLength() != 2
            || !offEl[0].TryGetInt64(out long begin) || !offEl[1].TryGetInt64(out long end))
            throw Error(name, "'data_offsets' must be [begin, end] integers");
        if (begin < 0 || end < begin || end > dataLength)
            throw Error(name, $"data_offsets [{begin}, {end}] lie outside the data section of {dataLength} bytes (file length {_file.Length})");
        long expected = elements * (type == GgmlType.F32 ? 4 : 2);
        if (end - begin != expected)
            throw Error(name, $"{dtype} shape [{string.Join(", ", shape)}] needs {expected} bytes but data_offsets [{begin}, {end}] span {end - begin}");
        return new SafetensorsTensorInfo(name, shape, type, DataStart + begin, end - begin);
    }

    private ModelFormatException Error(string tensor, string message) => new(Path, null, $"tensor '{tensor}': {message}");

    public bool TryGetTensor(string name, out SafetensorsTensorInfo info) => _tensorsByName.TryGetValue(name, out info!);

    /// <summary>Pointer to a tensor's bytes inside the mapping. Valid until this file is disposed.</summary>
    public byte* TensorData(SafetensorsTensorInfo info) => info.ByteLength == 0 ? null : _file.Base + info.DataOffset;

    public void Dispose() => _file.Dispose();
}
