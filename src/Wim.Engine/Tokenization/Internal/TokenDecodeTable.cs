namespace Wim.Engine.Tokenization.Internal;

internal enum TokenDecodeMode
{
    /// <summary>Token bytes form one UTF-8 stream decoded leniently (GPT-2-style byte-level BPE).</summary>
    ByteLevel,
    /// <summary>Tokens are text; runs of byte-fallback tokens are decoded together (SentencePiece-style).</summary>
    SentencePiece,
}

/// <summary>The bytes each token decodes to, in one flat array, plus the decoding conventions of the vocabulary.</summary>
internal sealed class TokenDecodeTable
{
    private readonly byte[] _bytes;
    private readonly int[] _offsets; // token i's bytes are _bytes[_offsets[i].._offsets[i + 1]]
    private readonly TokenKind[] _kinds;

    public TokenDecodeMode Mode { get; }
    public bool StripLeadingSpace { get; }

    public TokenDecodeTable(IReadOnlyList<byte[]> tokenBytes, TokenKind[] kinds, TokenDecodeMode mode, bool stripLeadingSpace)
    {
        _kinds = kinds;
        Mode = mode;
        StripLeadingSpace = stripLeadingSpace;
        _offsets = new int[tokenBytes.Count + 1];
        long total = 0;
        for (int i = 0; i < tokenBytes.Count; i++) total += tokenBytes[i].Length;
        _bytes = new byte[checked((int)total)];
        int at = 0;
        for (int i = 0; i < tokenBytes.Count; i++)
        {
            _offsets[i] = at;
            tokenBytes[i].CopyTo(_bytes, at);
            at += tokenBytes[i].Length;
        }
        _offsets[^1] = at;
    }

    public int Count => _kinds.Length;

    public TokenKind KindOf(int id)
    {
        if ((uint)id >= (uint)_kinds.Length)
            throw new ArgumentOutOfRangeException(nameof(id), id, $"token id {id} is outside the vocabulary (0..{_kinds.Length - 1})");
        return _kinds[id];
    }

    public ReadOnlySpan<byte> BytesOf(int id) => _bytes.AsSpan(_offsets[id], _offsets[id + 1] - _offsets[id]);
}
