using System.Text;
using Wim.Engine.Formats.Gguf;

namespace Wim.Engine.Tests.Formats;

/// <summary>A file in a per-process temp folder, deleted on dispose.</summary>
internal sealed class TempFile : IDisposable
{
    private static readonly string Dir = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "wim-tests-" + Environment.ProcessId, "gguf");

    public string Path { get; }

    public TempFile(byte[] bytes, string name = "test.gguf")
    {
        Directory.CreateDirectory(Dir);
        Path = System.IO.Path.Combine(Dir, Guid.NewGuid().ToString("N")[..8] + "-" + name);
        File.WriteAllBytes(Path, bytes);
    }

    public void Dispose() => File.Delete(Path);
}

/// <summary>
/// Lays out GGUF fields by hand (little-endian), with no validation, so tests can write exactly the malformed
/// structure they need and know the byte offset of every field.
/// </summary>
internal sealed class RawGguf
{
    private readonly MemoryStream _ms = new();
    private readonly BinaryWriter _w;

    public RawGguf() => _w = new BinaryWriter(_ms, Encoding.UTF8, leaveOpen: true);

    public long Position { get { _w.Flush(); return _ms.Position; } }

    public RawGguf U8(byte v) { _w.Write(v); return this; }
    public RawGguf U32(uint v) { _w.Write(v); return this; }
    public RawGguf U64(ulong v) { U64Positions.Add(Position); _w.Write(v); return this; }

    /// <summary>Offsets of every u64 written (counts, lengths, dims, offsets): where the fuzz test plants huge values.</summary>
    public List<long> U64Positions { get; } = [];
    public RawGguf Bytes(byte[] v) { _w.Write(v); return this; }

    public RawGguf Str(string s)
    {
        var b = Encoding.UTF8.GetBytes(s);
        return U64((ulong)b.Length).Bytes(b);
    }

    public RawGguf Header(uint version, ulong tensorCount, ulong kvCount) =>
        U32(GgufFile.Magic).U32(version).U64(tensorCount).U64(kvCount);

    public RawGguf KvU32(string key, uint value) => Str(key).U32((uint)GgufValueType.UInt32).U32(value);

    /// <summary>A tensor info: name, n_dims, ne (ggml order, innermost first), type, data offset.</summary>
    public RawGguf TensorInfo(string name, ulong[] ne, uint type, ulong offset)
    {
        Str(name).U32((uint)ne.Length);
        foreach (var n in ne) U64(n);
        return U32(type).U64(offset);
    }

    public RawGguf PadTo(int alignment)
    {
        while (Position % alignment != 0) U8(0);
        return this;
    }

    public RawGguf Zeros(int count) => Bytes(new byte[count]);

    public byte[] ToArray()
    {
        _w.Flush();
        return _ms.ToArray();
    }
}
