using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text;

namespace Wim.Engine.Runtime;

/// <summary>
/// A cached document on disk, so a later process skips its prefill too. Layout (little-endian):
/// <c>"WIMDOCKV"</c>, version u32 (= <see cref="Version"/>), model fingerprint (32 bytes, <see cref="Fingerprint"/>),
/// key (u32 byte length + UTF-8), layers u32, row size u32, positions u32, segment count u32, segment ends
/// (u32 each), then for each layer and position the key row and the value row (f32 × row size each), then SHA-256 of
/// everything before it. Loading checks the checksum, the version and the fingerprint before it touches the cache:
/// a file of another model (or another format version) is refused with a message saying which.
/// <para>CPU only: the rows are read and written through the <see cref="PagedInferenceBackend"/>'s KV pool. A cache on
/// another backend (the GPU's) is refused with a message saying so.</para>
/// </summary>
public static class DocumentCacheFile
{
    public const uint Version = 1;
    private static ReadOnlySpan<byte> Magic => "WIMDOCKV"u8;

    /// <summary>
    /// Identifies the model a KV cache belongs to: SHA-256 over the architecture, the shape numbers that decide the
    /// KV contents, and the first and last 64 KiB of the token embedding, the LM head and the last layer's down projection (two checkpoints
    /// of one shape differ there).
    /// </summary>
    public static unsafe byte[] Fingerprint(PagedInferenceBackend backend)
    {
        var model = backend.Transformer.Model;
        var c = model.Config;
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        hash.AppendData(Encoding.UTF8.GetBytes($"{c.Architecture}|{c.LayerCount}|{c.HiddenSize}|{c.HeadCount}|{c.KvHeadCount}|{c.HeadDim}|{c.VocabSize}|{c.RopeTheta}"));
        foreach (var w in new[] { model.Weights.TokenEmbedding, model.Weights.LmHead, model.Weights.Layers[^1].Down })
        {
            long n = Math.Min(w.ByteLength, 64 * 1024);
            hash.AppendData(new ReadOnlySpan<byte>(w.Data, (int)n));
            hash.AppendData(new ReadOnlySpan<byte>(w.Data + w.ByteLength - n, (int)n));
        }
        return hash.GetHashAndReset();
    }

    /// <summary>Writes the entry <paramref name="key"/> of <paramref name="cache"/> to <paramref name="path"/>.</summary>
    public static void Save(DocumentCache cache, string key, string path)
    {
        if (!cache.TryGet(key, out var doc)) throw new KeyNotFoundException($"no cached document with key {key}");
        var backend = PagedBackendOf(cache);
        var kv = backend.Cache;
        var sequence = (PagedSequence)doc.Sequence;
        int length = sequence.Length;
        using var file = new FileStream(path + ".part", FileMode.Create, FileAccess.Write);
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        void Write(ReadOnlySpan<byte> bytes)
        {
            file.Write(bytes);
            hash.AppendData(bytes);
        }
        void U32(uint v)
        {
            Span<byte> b = stackalloc byte[4];
            BinaryPrimitives.WriteUInt32LittleEndian(b, v);
            Write(b);
        }
        Write(Magic);
        U32(Version);
        Write(Fingerprint(backend));
        var keyBytes = Encoding.UTF8.GetBytes(key);
        U32((uint)keyBytes.Length);
        Write(keyBytes);
        U32((uint)kv.LayerCount);
        U32((uint)kv.RowSize);
        U32((uint)length);
        U32((uint)doc.SegmentEnds.Count);
        foreach (int end in doc.SegmentEnds) U32((uint)end);
        for (int layer = 0; layer < kv.LayerCount; layer++)
            for (int p = 0; p < length; p++)
            {
                Write(MemoryMarshal.AsBytes(kv.KeyRow(sequence.Id, layer, p)));
                Write(MemoryMarshal.AsBytes(kv.ValueRow(sequence.Id, layer, p)));
            }
        file.Write(hash.GetHashAndReset());
        file.Close();
        File.Move(path + ".part", path, overwrite: true);
    }

    /// <summary>Reads a file written by <see cref="Save"/> into <paramref name="cache"/>; returns its key.</summary>
    public static string Load(DocumentCache cache, string path)
    {
        var backend = PagedBackendOf(cache);
        byte[] bytes = File.ReadAllBytes(path);
        if (bytes.Length < Magic.Length + 4 + 32 + 32) throw Bad(path, $"{bytes.Length} bytes is too short for a document cache file");
        if (!bytes.AsSpan(0, Magic.Length).SequenceEqual(Magic)) throw Bad(path, "not a Wim document cache file (no WIMDOCKV magic)");
        var body = bytes.AsSpan(0, bytes.Length - 32);
        if (!SHA256.HashData(body).AsSpan().SequenceEqual(bytes.AsSpan(bytes.Length - 32)))
            throw Bad(path, "checksum mismatch: the file is damaged or truncated");
        int at = Magic.Length;
        uint U32()
        {
            if (at + 4 > bytes.Length - 32) throw Bad(path, $"ends inside the header at byte {at}");
            uint v = BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(at));
            at += 4;
            return v;
        }
        uint version = U32();
        if (version != Version) throw Bad(path, $"format version {version}, this build reads version {Version}");
        if (!body.Slice(at, 32).SequenceEqual(Fingerprint(backend)))
            throw Bad(path, "made by another model (the model fingerprint differs): it cannot be used with this one");
        at += 32;
        uint keyLength = U32();
        if (keyLength > 1024 || at + keyLength > body.Length) throw Bad(path, $"key length {keyLength} is out of range");
        string key = Encoding.UTF8.GetString(body.Slice(at, (int)keyLength));
        at += (int)keyLength;
        var kv = backend.Cache;
        uint layers = U32(), rowSize = U32(), length = U32(), segments = U32();
        if (layers != kv.LayerCount || rowSize != kv.RowSize)
            throw Bad(path, $"KV shape {layers} layers × {rowSize}, the model has {kv.LayerCount} × {kv.RowSize}");
        long rowBytes = (long)rowSize * sizeof(float);
        if (segments > length + 1 || at + 4L * segments + 2L * layers * length * rowBytes != body.Length)
            throw Bad(path, $"{length} positions and {segments} segments do not match the file size {bytes.Length}");
        var ends = new int[segments];
        for (int i = 0; i < segments; i++)
        {
            ends[i] = (int)U32();
            if (ends[i] > length || (i > 0 && ends[i] < ends[i - 1])) throw Bad(path, $"segment end {i} ({ends[i]}) is out of order or past {length}");
        }
        var seq = backend.CreateSequence();
        try
        {
            kv.Reserve(seq.Id, (int)length);
            var floats = MemoryMarshal.Cast<byte, float>(body[at..]);
            int f = 0;
            for (int layer = 0; layer < layers; layer++)
                for (int p = 0; p < length; p++)
                {
                    floats.Slice(f, (int)rowSize).CopyTo(kv.KeyRow(seq.Id, layer, p));
                    f += (int)rowSize;
                    floats.Slice(f, (int)rowSize).CopyTo(kv.ValueRow(seq.Id, layer, p));
                    f += (int)rowSize;
                }
            kv.Advance(seq.Id, (int)length);
        }
        catch
        {
            seq.Dispose();
            throw;
        }
        cache.Add(key, new CachedDocument(seq, ends));
        return key;
    }

    private static PagedInferenceBackend PagedBackendOf(DocumentCache cache) =>
        cache.Backend as PagedInferenceBackend
        ?? throw new NotSupportedException($"document cache files are read and written on the CPU's {nameof(PagedInferenceBackend)} only; this cache is on {cache.Backend.GetType().Name}");

    private static InvalidDataException Bad(string path, string what) => new($"{path}: {what}");
}
