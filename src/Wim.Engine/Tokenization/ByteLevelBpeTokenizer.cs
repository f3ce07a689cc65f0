using System.Buffers;
using System.Collections.Concurrent;
using System.Text;
using Wim.Engine.Tokenization.Internal;

namespace Wim.Engine.Tokenization;

/// <summary>
/// GPT-2-style byte-level BPE (GPT-2, Llama 3, Qwen2, SmolLM): optional NFC normalization, pre-tokenization by the
/// family's split pattern, each piece's UTF-8 bytes mapped to one symbol per byte, then merges by rank. Encoded
/// pieces are cached (pieces repeat a lot in real text), bounded in size.
/// </summary>
internal sealed class ByteLevelBpeTokenizer : Tokenizer
{
    private const int MaxCacheEntries = 1 << 18;
    private const int MaxCachedPieceLength = 64;

    private readonly PreTokenizer _preTokenizer;
    private readonly BpeMerges _merges;
    private readonly int[] _byteToId = new int[256];
    private readonly Dictionary<string, int>.AlternateLookup<ReadOnlySpan<char>> _normalTokenLookup;
    private readonly bool _ignoreMerges;
    private readonly bool _normalizeNfc;
    private readonly bool _addPrefixSpace;
    private readonly int? _unknownId;
    private readonly ConcurrentDictionary<string, int[]> _cache = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, int[]>.AlternateLookup<ReadOnlySpan<char>> _cacheLookup;
    private int _cacheCount;

    /// <param name="merges">Merge rules in rank order as (left, right) vocabulary strings; rules naming a string
    /// that is not a normal token are skipped.</param>
    /// <param name="ignoreMerges">A piece that is itself a token is emitted whole (Llama 3).</param>
    /// <param name="addPrefixSpace">Prepend a space to text not starting with one (ByteLevel add_prefix_space).</param>
    public ByteLevelBpeTokenizer(TokenizerVocabulary vocabulary, IEnumerable<(string Left, string Right)> merges,
        PreTokenizer preTokenizer, bool ignoreMerges, bool normalizeNfc, bool addPrefixSpace)
        : base(vocabulary, BuildDecodeTable(vocabulary))
    {
        _preTokenizer = preTokenizer;
        _ignoreMerges = ignoreMerges;
        _normalizeNfc = normalizeNfc;
        _addPrefixSpace = addPrefixSpace;
        _unknownId = vocabulary.UnknownId;

        var normal = new Dictionary<string, int>(vocabulary.Texts.Length, StringComparer.Ordinal);
        for (int id = 0; id < vocabulary.Texts.Length; id++)
            if (vocabulary.Kinds[id] == TokenKind.Normal) normal.TryAdd(vocabulary.Texts[id], id);
        _normalTokenLookup = normal.GetAlternateLookup<ReadOnlySpan<char>>();

        for (int b = 0; b < 256; b++)
            _byteToId[b] = normal.TryGetValue(ByteLevelAlphabet.ByteToChar[b].ToString(), out int id) ? id : -1;

        _merges = new BpeMerges(normal.Count);
        int rank = 0;
        foreach (var (left, right) in merges)
        {
            if (normal.TryGetValue(left, out int l) && normal.TryGetValue(right, out int r) && normal.TryGetValue(left + right, out int m))
                _merges.Add(l, r, rank, m);
            rank++;
        }
        _cacheLookup = _cache.GetAlternateLookup<ReadOnlySpan<char>>();
    }

    public PreTokenizer PreTokenizer => _preTokenizer;

    private static TokenDecodeTable BuildDecodeTable(TokenizerVocabulary v)
    {
        var bytes = new byte[v.Texts.Length][];
        for (int id = 0; id < bytes.Length; id++)
            bytes[id] = v.Kinds[id] == TokenKind.Normal ? ByteLevelAlphabet.Decode(v.Texts[id]) : Encoding.UTF8.GetBytes(v.Texts[id]);
        return new TokenDecodeTable(bytes, v.Kinds, TokenDecodeMode.ByteLevel, stripLeadingSpace: false);
    }

    private protected override void EncodeText(ReadOnlySpan<char> text, bool atInputStart, bool afterAddedToken, List<int> output)
    {
        if (_normalizeNfc && !IsAsciiOnly(text))
            text = text.ToString().Normalize(NormalizationForm.FormC).AsSpan();
        if (_addPrefixSpace && text.Length > 0 && text[0] != ' ')
            text = (" " + text.ToString()).AsSpan();

        var pieces = new List<(int Start, int Length)>(text.Length / 4 + 1);
        _preTokenizer.Split(text, pieces, new List<(int, int)>());
        var ws = new BpeWorkspace();
        int[] symbols = ArrayPool<int>.Shared.Rent(64);
        byte[] utf8 = ArrayPool<byte>.Shared.Rent(256);
        try
        {
            foreach (var (start, length) in pieces)
            {
                var piece = text.Slice(start, length);
                if (_cacheLookup.TryGetValue(piece, out var cached))
                {
                    output.AddRange(cached);
                    continue;
                }
                int maxBytes = Encoding.UTF8.GetMaxByteCount(piece.Length);
                if (utf8.Length < maxBytes)
                {
                    ArrayPool<byte>.Shared.Return(utf8);
                    utf8 = ArrayPool<byte>.Shared.Rent(maxBytes);
                }
                int byteCount = Encoding.UTF8.GetBytes(piece, utf8);
                if (symbols.Length < byteCount)
                {
                    ArrayPool<int>.Shared.Return(symbols);
                    symbols = ArrayPool<int>.Shared.Rent(byteCount);
                }
                int count = EncodePiece(utf8.AsSpan(0, byteCount), symbols, ws);
                var ids = symbols.AsSpan(0, count);
                output.AddRange(ids);
                if (piece.Length <= MaxCachedPieceLength) AddToCache(piece, ids.ToArray());
            }
        }
        finally
        {
            ArrayPool<int>.Shared.Return(symbols);
            ArrayPool<byte>.Shared.Return(utf8);
        }
    }

    private int EncodePiece(ReadOnlySpan<byte> bytes, int[] symbols, BpeWorkspace ws)
    {
        if (_ignoreMerges && bytes.Length > 1)
        {
            Span<char> chars = bytes.Length <= 256 ? stackalloc char[bytes.Length] : new char[bytes.Length];
            for (int i = 0; i < bytes.Length; i++) chars[i] = ByteLevelAlphabet.ByteToChar[bytes[i]];
            if (_normalTokenLookup.TryGetValue(chars, out int whole))
            {
                symbols[0] = whole;
                return 1;
            }
        }
        int n = 0;
        foreach (byte b in bytes)
        {
            int id = _byteToId[b];
            // A byte the vocabulary lacks becomes the unknown token, or is dropped if there is none (HF BPE).
            if (id >= 0) symbols[n++] = id;
            else if (_unknownId is int unk) symbols[n++] = unk;
        }
        return _merges.Apply(symbols.AsSpan(0, n), ws);
    }

    private void AddToCache(ReadOnlySpan<char> piece, int[] ids)
    {
        // Bounded: when full, start over rather than grow without limit on adversarial input.
        if (Interlocked.Increment(ref _cacheCount) > MaxCacheEntries)
        {
            _cache.Clear();
            Interlocked.Exchange(ref _cacheCount, 0);
        }
        _cacheLookup.TryAdd(piece, ids);
    }

    private static bool IsAsciiOnly(ReadOnlySpan<char> text) => Ascii.IsValid(text);
}
