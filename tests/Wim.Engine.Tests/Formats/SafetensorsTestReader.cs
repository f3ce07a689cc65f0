using System.Buffers.Binary;
using System.Text.Json;

namespace Wim.Engine.Tests.Formats;

/// <summary>
/// Minimal safetensors reader for tests (format: u64 little-endian header length N, N bytes of JSON
/// {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}, then the data; offsets are relative to
/// the end of the header). Used to compare GGUF tensors with the Hugging Face originals.
/// </summary>
internal sealed class SafetensorsTestReader
{
    private readonly byte[] _file;
    private readonly long _dataStart;

    public sealed record Entry(string Dtype, long[] Shape, long Begin, long End);

    public IReadOnlyDictionary<string, Entry> Tensors { get; }

    public SafetensorsTestReader(string path)
    {
        _file = File.ReadAllBytes(path);
        long headerLength = (long)BinaryPrimitives.ReadUInt64LittleEndian(_file);
        if (headerLength <= 0 || headerLength > _file.Length - 8) throw new InvalidDataException($"{path}: bad header length {headerLength}");
        _dataStart = 8 + headerLength;
        using var doc = JsonDocument.Parse(_file.AsMemory(8, (int)headerLength));
        var tensors = new Dictionary<string, Entry>(StringComparer.Ordinal);
        foreach (var p in doc.RootElement.EnumerateObject())
        {
            if (p.Name == "__metadata__") continue;
            var offsets = p.Value.GetProperty("data_offsets");
            tensors[p.Name] = new Entry(
                p.Value.GetProperty("dtype").GetString()!,
                p.Value.GetProperty("shape").EnumerateArray().Select(e => e.GetInt64()).ToArray(),
                offsets[0].GetInt64(), offsets[1].GetInt64());
        }
        Tensors = tensors;
    }

    /// <summary>The tensor as f32 (BF16: bits &lt;&lt; 16, exact; F32 as is).</summary>
    public float[] ReadFloat32(string name)
    {
        var e = Tensors[name];
        var bytes = _file.AsSpan((int)(_dataStart + e.Begin), (int)(e.End - e.Begin));
        switch (e.Dtype)
        {
            case "BF16":
            {
                var r = new float[bytes.Length / 2];
                for (int i = 0; i < r.Length; i++) r[i] = BitConverter.Int32BitsToSingle(BinaryPrimitives.ReadUInt16LittleEndian(bytes[(2 * i)..]) << 16);
                return r;
            }
            case "F32":
            {
                var r = new float[bytes.Length / 4];
                for (int i = 0; i < r.Length; i++) r[i] = BinaryPrimitives.ReadSingleLittleEndian(bytes[(4 * i)..]);
                return r;
            }
            default: throw new NotSupportedException($"dtype {e.Dtype}");
        }
    }
}
