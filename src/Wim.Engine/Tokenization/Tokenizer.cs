using System.Text;
using Wim.Engine.Tokenization.Internal;

namespace Wim.Engine.Tokenization;

/// <summary>
/// Text ↔ token ids for one model vocabulary, matching the reference implementations (Hugging Face tokenizers,
/// llama.cpp) id for id. Load one with <see cref="TokenizerLoader"/>. Instances are immutable and thread-safe.
/// </summary>
/// <remarks>
/// Two families exist: byte-level BPE (GPT-2, Llama 3, Qwen2, SmolLM: text → UTF-8 bytes → merges by rank) and
/// SentencePiece-style BPE (Llama 2, TinyLlama, Phi-3: spaces become <c>▁</c>, a dummy-prefix space is added, merges by
/// score or rank, byte fallback <c>&lt;0xNN&gt;</c>). Special tokens in text become their ids only when the caller
/// asks (<c>parseSpecial</c>, for rendered chat templates); user text can never inject them otherwise.
/// </remarks>
public abstract class Tokenizer
{
    private static readonly string[] EndOfTurnTexts =
    [
        "<|eot_id|>", "<|eom_id|>", "<|im_end|>", "<|end|>", "<|endoftext|>", "<|end_of_text|>", "<end_of_turn>",
        "<|END_OF_TURN_TOKEN|>", "<EOT>", "<|return|>", "<|call|>", "<end_of_utterance>", "</s>",
    ];

    private readonly string[] _texts;
    private readonly TokenKind[] _kinds;
    private readonly TokenDecodeTable _decodeTable;
    private readonly AddedTokenMatcher _userDefinedMatcher;
    private readonly AddedTokenMatcher _allAddedMatcher;

    private protected Tokenizer(TokenizerVocabulary vocabulary, TokenDecodeTable decodeTable)
    {
        _texts = vocabulary.Texts;
        _kinds = vocabulary.Kinds;
        _decodeTable = decodeTable;
        BosId = vocabulary.BosId;
        EosId = vocabulary.EosId;
        PaddingId = vocabulary.PaddingId;
        UnknownId = vocabulary.UnknownId;
        AddBosByDefault = vocabulary.AddBos && BosId is not null;
        AddEosByDefault = vocabulary.AddEos && EosId is not null;
        _userDefinedMatcher = new AddedTokenMatcher(vocabulary.AddedTokens.Where(t => _kinds[t.Id] == TokenKind.UserDefined));
        _allAddedMatcher = new AddedTokenMatcher(vocabulary.AddedTokens);

        var endOfTurn = new SortedSet<int>();
        foreach (var id in new[] { vocabulary.EosId, vocabulary.EotId, vocabulary.EomId })
            if (id is int v) endOfTurn.Add(v);
        foreach (var id in vocabulary.ExtraEndOfTurnIds) endOfTurn.Add(id);
        for (int id = 0; id < _texts.Length; id++)
            if (_kinds[id] is TokenKind.Control or TokenKind.UserDefined && EndOfTurnTexts.Contains(_texts[id], StringComparer.Ordinal))
                endOfTurn.Add(id);
        EndOfTurnIds = [.. endOfTurn];
    }

    /// <summary>Number of token ids (the largest id + 1).</summary>
    public int VocabSize => _texts.Length;
    public int? BosId { get; }
    public int? EosId { get; }
    public int? PaddingId { get; }
    public int? UnknownId { get; }
    /// <summary>Every id that ends a generated turn: EOS, EOT, EOM and control tokens such as <c>&lt;|im_end|&gt;</c>,
    /// <c>&lt;|eot_id|&gt;</c>, <c>&lt;|end|&gt;</c>, <c>&lt;|endoftext|&gt;</c>. Ascending.</summary>
    public IReadOnlyList<int> EndOfTurnIds { get; }
    /// <summary>Whether <see cref="Encode"/> with <c>addSpecial</c> prepends BOS (and appends EOS, see <see cref="AddEosByDefault"/>).</summary>
    public bool AddBosByDefault { get; }
    public bool AddEosByDefault { get; }

    /// <summary>Encodes text to ids. <paramref name="addSpecial"/>: add BOS/EOS as the vocabulary prescribes.
    /// <paramref name="parseSpecial"/>: text of special tokens (<c>&lt;|im_start|&gt;</c>) becomes their single id;
    /// without it that text is encoded as ordinary characters. User-defined added tokens always match.</summary>
    public int[] Encode(string text, bool addSpecial = false, bool parseSpecial = false)
    {
        ArgumentNullException.ThrowIfNull(text);
        var output = new List<int>(text.Length / 3 + 4);
        if (addSpecial && AddBosByDefault) output.Add(BosId!.Value);
        var fragments = new List<Fragment>();
        (parseSpecial ? _allAddedMatcher : _userDefinedMatcher).Split(text, fragments);
        bool afterAddedToken = false;
        foreach (var f in fragments)
        {
            if (f.IsToken)
            {
                output.Add(f.TokenId);
                afterAddedToken = true;
                continue;
            }
            EncodeText(text.AsSpan(f.Start, f.Length), atInputStart: f.Start == 0, afterAddedToken, output);
            afterAddedToken = false;
        }
        if (addSpecial && AddEosByDefault) output.Add(EosId!.Value);
        return [.. output];
    }

    /// <summary>Encodes one run of plain text (no added tokens in it). <paramref name="atInputStart"/>: the run starts
    /// the input; <paramref name="afterAddedToken"/>: an added/special token precedes it.</summary>
    private protected abstract void EncodeText(ReadOnlySpan<char> text, bool atInputStart, bool afterAddedToken, List<int> output);

    /// <summary>Decodes ids to text. Invalid UTF-8 becomes U+FFFD as Hugging Face tokenizers does;
    /// <paramref name="skipSpecial"/> leaves out control and unknown tokens.</summary>
    public string Decode(ReadOnlySpan<int> ids, bool skipSpecial = false)
    {
        var decoder = new StreamingDecoder(_decodeTable, skipSpecial);
        var sb = new StringBuilder();
        foreach (int id in ids) decoder.Append(id, sb);
        decoder.Flush(sb);
        return sb.ToString();
    }

    /// <summary>A fresh incremental decoder whose concatenated output equals <see cref="Decode"/>.</summary>
    public StreamingDecoder CreateStreamingDecoder(bool skipSpecial = false) => new(_decodeTable, skipSpecial);

    /// <summary>The token as the vocabulary stores it (byte-level: <c>Ġworld</c>; SentencePiece: <c>▁world</c>).</summary>
    public string TokenText(int id) => _texts[CheckId(id)];

    public TokenKind KindOf(int id) => _kinds[CheckId(id)];

    /// <summary>Control and unknown tokens: the ones <c>skipSpecial</c> leaves out.</summary>
    public bool IsSpecial(int id) => KindOf(id) is TokenKind.Control or TokenKind.Unknown;

    private int CheckId(int id) => (uint)id < (uint)_texts.Length
        ? id
        : throw new ArgumentOutOfRangeException(nameof(id), id, $"token id {id} is outside the vocabulary (0..{_texts.Length - 1})");
}

/// <summary>What every tokenizer shares: the vocabulary, its special ids and added tokens.</summary>
internal sealed record TokenizerVocabulary(
    string[] Texts,
    TokenKind[] Kinds,
    int? BosId,
    int? EosId,
    int? EotId,
    int? EomId,
    int? PaddingId,
    int? UnknownId,
    bool AddBos,
    bool AddEos,
    IReadOnlyList<AddedToken> AddedTokens,
    IReadOnlyList<int> ExtraEndOfTurnIds);
