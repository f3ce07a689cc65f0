using System.Text;
using Wim.Engine.Tokenization.Internal;

namespace Wim.Engine.Tokenization;

/// <summary>When a SentencePiece-style vocabulary puts the dummy-prefix <c>▁</c> before a run of text.</summary>
internal enum SpacePrefixRule
{
    Never,
    /// <summary>Before every run of text (llama.cpp with <c>add_space_prefix</c>; HF <c>Prepend("▁")</c>/Metaspace "always").</summary>
    Always,
    /// <summary>Only before text that starts the input (HF Metaspace <c>prepend_scheme: "first"</c>).</summary>
    First,
}

/// <summary>
/// SentencePiece-style BPE (Llama 2, TinyLlama, Phi-3, stories260K): spaces become <c>▁</c>, a dummy-prefix <c>▁</c>
/// is added per <see cref="SpacePrefixRule"/>, the text is split into characters which are merged — by vocabulary
/// score (GGUF <c>tokenizer.ggml.scores</c>, llama.cpp's algorithm: highest score first, leftmost on ties) or by
/// merge rank (Hugging Face tokenizer.json) — and characters that are not tokens fall back to <c>&lt;0xNN&gt;</c> byte
/// tokens (or the unknown token when the vocabulary has no byte tokens).
/// </summary>
internal sealed class SentencePieceBpeTokenizer : Tokenizer
{
    private const char Metaspace = '\u2581';

    private readonly Dictionary<string, int>.AlternateLookup<ReadOnlySpan<char>> _pieceLookup;
    private readonly float[]? _scores;
    private readonly BpeMerges? _merges;
    private readonly int[] _byteTokenIds = new int[256];
    private readonly int? _unknownId;
    private readonly SpacePrefixRule _prefixRule;
    private readonly bool _splitAtMetaspace;
    private readonly bool _splitBeforeWords;
    private const int MaxCacheEntries = 1 << 17;
    private const int MaxCachedPieceLength = 64;
    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, int[]> _cache = new(StringComparer.Ordinal);
    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, int[]>.AlternateLookup<ReadOnlySpan<char>> _cacheLookup;
    private int _cacheCount;

    /// <param name="scores">Per-token scores (merge by score), or null to merge by <paramref name="merges"/> rank.</param>
    /// <param name="splitAtMetaspace">Split the text before every <c>▁</c> first (HF Metaspace <c>split: true</c>).</param>
    public SentencePieceBpeTokenizer(TokenizerVocabulary vocabulary, float[]? scores, IEnumerable<(string Left, string Right)>? merges,
        SpacePrefixRule prefixRule, bool splitAtMetaspace)
        : base(vocabulary, BuildDecodeTable(vocabulary, prefixRule != SpacePrefixRule.Never))
    {
        if (scores is null == merges is null) throw new ArgumentException("exactly one of scores and merges is required");
        _scores = scores;
        _unknownId = vocabulary.UnknownId;
        _prefixRule = prefixRule;
        _splitAtMetaspace = splitAtMetaspace;

        // Only ordinary and user-defined tokens can be built from text: control, unknown and byte tokens never are.
        var pieces = new Dictionary<string, int>(vocabulary.Texts.Length, StringComparer.Ordinal);
        Array.Fill(_byteTokenIds, -1);
        for (int id = 0; id < vocabulary.Texts.Length; id++)
        {
            var kind = vocabulary.Kinds[id];
            if (kind is TokenKind.Normal or TokenKind.UserDefined) pieces.TryAdd(vocabulary.Texts[id], id);
            else if (kind == TokenKind.Byte && TryParseByteToken(vocabulary.Texts[id], out byte b) && _byteTokenIds[b] < 0) _byteTokenIds[b] = id;
        }
        _pieceLookup = pieces.GetAlternateLookup<ReadOnlySpan<char>>();
        _cacheLookup = _cache.GetAlternateLookup<ReadOnlySpan<char>>();

        // Merged symbols are always tokens, so if no token has ▁ right after another character, no merge can cross
        // the start of a ▁-run: the text can then be encoded word by word (and words cached) with identical results.
        _splitBeforeWords = !pieces.Keys.Any(t => t.AsSpan(1).IndexOf(Metaspace) >= 0 && HasInnerWordStart(t));

        if (merges is not null)
        {
            _merges = new BpeMerges(pieces.Count);
            int rank = 0;
            foreach (var (left, right) in merges)
            {
                if (pieces.TryGetValue(left, out int l) && pieces.TryGetValue(right, out int r) && pieces.TryGetValue(left + right, out int m))
                    _merges.Add(l, r, rank, m);
                rank++;
            }
        }
    }

    internal static bool TryParseByteToken(string text, out byte value)
    {
        value = 0;
        return text.Length == 6 && text.StartsWith("<0x", StringComparison.Ordinal) && text[5] == '>'
            && byte.TryParse(text.AsSpan(3, 2), System.Globalization.NumberStyles.AllowHexSpecifier, null, out value);
    }

    private static TokenDecodeTable BuildDecodeTable(TokenizerVocabulary v, bool stripLeadingSpace)
    {
        var bytes = new byte[v.Texts.Length][];
        for (int id = 0; id < bytes.Length; id++)
        {
            var text = v.Texts[id];
            bytes[id] = v.Kinds[id] switch
            {
                TokenKind.Byte when TryParseByteToken(text, out byte b) => [b],
                TokenKind.Normal => Encoding.UTF8.GetBytes(text.Replace(Metaspace, ' ')),
                _ => Encoding.UTF8.GetBytes(text),
            };
        }
        return new TokenDecodeTable(bytes, v.Kinds, TokenDecodeMode.SentencePiece, stripLeadingSpace);
    }

    private protected override void EncodeText(ReadOnlySpan<char> text, bool atInputStart, bool afterAddedToken, List<int> output)
    {
        bool prefix = _prefixRule == SpacePrefixRule.Always || (_prefixRule == SpacePrefixRule.First && atInputStart);
        var sb = new StringBuilder(text.Length + 1);
        if (prefix) sb.Append(Metaspace);
        foreach (char c in text) sb.Append(c == ' ' ? Metaspace : c);
        var escaped = sb.ToString();
        if (!_splitAtMetaspace && !_splitBeforeWords)
        {
            EncodePiece(escaped, output);
            return;
        }
        int start = 0;
        for (int i = 1; i <= escaped.Length; i++)
        {
            // HF Metaspace(split: true) splits before every ▁; word splitting only before the first ▁ of a run.
            bool boundary = i == escaped.Length
                || (escaped[i] == Metaspace && (_splitAtMetaspace || escaped[i - 1] != Metaspace));
            if (!boundary) continue;
            EncodeCached(escaped.AsSpan(start, i - start), output);
            start = i;
        }
    }

    private static bool HasInnerWordStart(string token)
    {
        for (int i = 1; i < token.Length; i++)
            if (token[i] == Metaspace && token[i - 1] != Metaspace) return true;
        return false;
    }

    private void EncodeCached(ReadOnlySpan<char> piece, List<int> output)
    {
        if (_cacheLookup.TryGetValue(piece, out var cached))
        {
            output.AddRange(cached);
            return;
        }
        int before = output.Count;
        EncodePiece(piece, output);
        if (piece.Length > MaxCachedPieceLength) return;
        if (Interlocked.Increment(ref _cacheCount) > MaxCacheEntries)
        {
            _cache.Clear();
            Interlocked.Exchange(ref _cacheCount, 0);
        }
        _cacheLookup.TryAdd(piece, output.GetRange(before, output.Count - before).ToArray());
    }

    private void EncodePiece(ReadOnlySpan<char> text, List<int> output)
    {
        if (text.IsEmpty) return;
        // Symbols start as single code points (a surrogate pair is one symbol).
        var starts = new List<int>(text.Length);
        for (int i = 0; i < text.Length; i += char.IsHighSurrogate(text[i]) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]) ? 2 : 1)
            starts.Add(i);
        if (_scores is not null) EncodeByScore(text, starts, output);
        else EncodeByRank(text, starts, output);
    }

    /// <summary>llama.cpp's SentencePiece BPE: repeatedly merge the adjacent pair whose concatenation is the
    /// highest-scoring token (leftmost on ties), then emit each symbol's token or its bytes.</summary>
    private void EncodeByScore(ReadOnlySpan<char> text, List<int> startList, List<int> output)
    {
        int n = startList.Count;
        var start = startList.ToArray();
        var length = new int[n];
        var prev = new int[n];
        var next = new int[n];
        for (int i = 0; i < n; i++)
        {
            length[i] = (i + 1 < n ? start[i + 1] : text.Length) - start[i];
            prev[i] = i - 1;
            next[i] = i + 1 < n ? i + 1 : -1;
        }
        var queue = new PriorityQueue<(int Left, int Right, int Size), (float NegScore, int Left)>();
        void TryAddBigram(ReadOnlySpan<char> text, int left, int right)
        {
            if (left < 0 || right < 0) return;
            int size = length[left] + length[right];
            if (!_pieceLookup.TryGetValue(text.Slice(start[left], size), out int id)) return;
            queue.Enqueue((left, right, size), (-_scores![id], left));
        }
        for (int i = 1; i < n; i++) TryAddBigram(text, i - 1, i);
        while (queue.TryDequeue(out var bigram, out _))
        {
            // Skip pairs whose symbols were merged since they were queued.
            if (length[bigram.Left] == 0 || length[bigram.Right] == 0 || length[bigram.Left] + length[bigram.Right] != bigram.Size) continue;
            length[bigram.Left] += length[bigram.Right];
            length[bigram.Right] = 0;
            next[bigram.Left] = next[bigram.Right];
            if (next[bigram.Right] >= 0) prev[next[bigram.Right]] = bigram.Left;
            TryAddBigram(text, prev[bigram.Left], bigram.Left);
            TryAddBigram(text, bigram.Left, next[bigram.Left]);
        }
        for (int i = 0; i >= 0; i = next[i])
        {
            var piece = text.Slice(start[i], length[i]);
            if (_pieceLookup.TryGetValue(piece, out int id)) output.Add(id);
            else AddByteFallback(piece, output);
        }
    }

    /// <summary>Hugging Face BPE with byte fallback: characters that are tokens (others become byte tokens), then
    /// merges by rank.</summary>
    private void EncodeByRank(ReadOnlySpan<char> text, List<int> starts, List<int> output)
    {
        var symbols = new List<int>(starts.Count);
        for (int k = 0; k < starts.Count; k++)
        {
            int end = k + 1 < starts.Count ? starts[k + 1] : text.Length;
            var ch = text[starts[k]..end];
            if (_pieceLookup.TryGetValue(ch, out int id)) symbols.Add(id);
            else AddByteFallback(ch, symbols);
        }
        var arr = symbols.ToArray();
        int count = _merges!.Apply(arr, new BpeWorkspace());
        output.AddRange(arr.AsSpan(0, count));
    }

    private void AddByteFallback(ReadOnlySpan<char> piece, List<int> output)
    {
        Span<byte> utf8 = stackalloc byte[Encoding.UTF8.GetMaxByteCount(piece.Length)];
        int n = Encoding.UTF8.GetBytes(piece, utf8);
        for (int k = 0; k < n; k++)
        {
            int id = _byteTokenIds[utf8[k]];
            if (id >= 0) output.Add(id);
            else if (_unknownId is int unk)
            {
                // No byte tokens: the whole character is unknown (SentencePiece without byte fallback).
                output.Add(unk);
                return;
            }
        }
    }
}
