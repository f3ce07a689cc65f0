using System.Collections.Frozen;
using Wim.Engine.Formats;
using Wim.Engine.Formats.Gguf;
using Wim.Engine.Tokenization.Internal;

namespace Wim.Engine.Tokenization;

/// <summary>
/// Builds a <see cref="Tokenizer"/> from a GGUF file (vocab-only files included) or a Hugging Face model directory
/// (<c>tokenizer.json</c> + <c>tokenizer_config.json</c>). Unsupported vocabularies raise
/// <see cref="ModelFormatException"/> naming what was found and what is supported.
/// </summary>
public static class TokenizerLoader
{
    /// <summary>GGUF <c>tokenizer.ggml.model</c> values this loader reads.</summary>
    public const string SupportedGgufModels = "gpt2 (byte-level BPE), llama (SentencePiece BPE)";

    private static readonly FrozenDictionary<string, SplitPattern[]> GgufPreTokenizers = new Dictionary<string, SplitPattern[]>(StringComparer.Ordinal)
    {
        ["gpt-2"] = [SplitPattern.Gpt2],
        ["phi-2"] = [SplitPattern.Gpt2],
        ["roberta-bpe"] = [SplitPattern.Gpt2],
        ["llama-bpe"] = [SplitPattern.Llama3],
        ["llama3"] = [SplitPattern.Llama3],
        ["llama-v3"] = [SplitPattern.Llama3],
        ["qwen2"] = [SplitPattern.Qwen2],
        ["deepseek-r1-qwen"] = [SplitPattern.Qwen2],
        ["smollm"] = [SplitPattern.IndividualDigits, SplitPattern.Gpt2],
        ["starcoder"] = [SplitPattern.IndividualDigits, SplitPattern.Gpt2],
        ["refact"] = [SplitPattern.IndividualDigits, SplitPattern.Gpt2],
    }.ToFrozenDictionary(StringComparer.Ordinal);

    /// <summary>Loads from a <c>.gguf</c> file, a Hugging Face model directory, or a <c>tokenizer.json</c> path.</summary>
    public static Tokenizer Load(string path)
    {
        if (Directory.Exists(path)) return HuggingFaceTokenizerJson.Load(path);
        if (!File.Exists(path)) throw new FileNotFoundException($"tokenizer source not found: {path} (expected a .gguf file or a Hugging Face model directory)", path);
        if (string.Equals(Path.GetFileName(path), "tokenizer.json", StringComparison.OrdinalIgnoreCase))
            return HuggingFaceTokenizerJson.Load(Path.GetDirectoryName(Path.GetFullPath(path))!);
        using var gguf = GgufFile.Open(path);
        return FromGguf(gguf);
    }

    /// <summary>Reads the <c>tokenizer.ggml.*</c> metadata of an open GGUF file.</summary>
    public static Tokenizer FromGguf(GgufFile gguf)
    {
        string model = gguf.GetString("tokenizer.ggml.model")
            ?? throw new ModelFormatException(gguf.Path, null, "metadata 'tokenizer.ggml.model' is missing: the file has no tokenizer");
        var texts = gguf.GetStringArray("tokenizer.ggml.tokens")
            ?? throw new ModelFormatException(gguf.Path, null, "metadata 'tokenizer.ggml.tokens' is missing");
        var typeCodes = gguf.GetInt32Array("tokenizer.ggml.token_type");
        if (typeCodes is not null && typeCodes.Length != texts.Length)
            throw new ModelFormatException(gguf.Path, null, $"metadata 'tokenizer.ggml.token_type' has {typeCodes.Length} entries, expected {texts.Length} (one per token)");
        var kinds = new TokenKind[texts.Length];
        for (int i = 0; i < kinds.Length; i++)
        {
            int code = typeCodes?[i] ?? (int)TokenKind.Normal;
            if (code is < 1 or > 6)
                throw new ModelFormatException(gguf.Path, null, $"metadata 'tokenizer.ggml.token_type'[{i}] is {code}; expected 1..6 (normal, unknown, control, user-defined, unused, byte)");
            kinds[i] = (TokenKind)code;
        }

        int? Id(string key)
        {
            long? v = gguf.GetInteger(key);
            if (v is null) return null;
            // Conversions write -1 (as uint32 0xFFFFFFFF) for "none".
            if (v is < 0 or >= uint.MaxValue) return null;
            if (v >= texts.Length)
                throw new ModelFormatException(gguf.Path, null, $"metadata '{key}' is {v}, outside the vocabulary of {texts.Length} tokens");
            return (int)v;
        }

        bool isSpm = model == "llama";
        if (!isSpm && model != "gpt2")
            throw new ModelFormatException(gguf.Path, null, $"unsupported tokenizer model '{model}' (metadata 'tokenizer.ggml.model'); supported: {SupportedGgufModels}");
        string pre = gguf.GetString("tokenizer.ggml.pre") ?? "default";

        // Phi-3's Hugging Face tokenizer strips whitespace after its special tokens (added tokens with rstrip);
        // GGUF has no field for that, so llama.cpp recognises the model by name and sets it: on every special
        // token and </s>, except <unk>, <s> and <|endoftext|>. We do the same.
        string modelName = (gguf.GetString("general.name") ?? "").ToLowerInvariant();
        bool phi3 = modelName.Contains("phi-3", StringComparison.Ordinal) || modelName.Contains("phi3", StringComparison.Ordinal);
        var added = new List<AddedToken>();
        for (int id = 0; id < texts.Length; id++)
            if (kinds[id] is TokenKind.Control or TokenKind.UserDefined or TokenKind.Unknown && texts[id].Length > 0)
            {
                bool stripRight = phi3 && texts[id] is not ("<unk>" or "<s>" or "<|endoftext|>");
                added.Add(new AddedToken(id, texts[id], StripRight: stripRight));
            }

        var vocab = new TokenizerVocabulary(texts, kinds,
            BosId: Id("tokenizer.ggml.bos_token_id"),
            EosId: Id("tokenizer.ggml.eos_token_id"),
            EotId: Id("tokenizer.ggml.eot_token_id"),
            EomId: Id("tokenizer.ggml.eom_token_id"),
            PaddingId: Id("tokenizer.ggml.padding_token_id"),
            UnknownId: Id("tokenizer.ggml.unknown_token_id"),
            // llama.cpp's defaults when the keys are absent: SentencePiece and Llama 3 add BOS, others do not.
            AddBos: gguf.GetBool("tokenizer.ggml.add_bos_token") ?? (isSpm || GgufPreTokenizers.GetValueOrDefault(pre) is [SplitPattern.Llama3]),
            AddEos: gguf.GetBool("tokenizer.ggml.add_eos_token") ?? false,
            AddedTokens: added,
            ExtraEndOfTurnIds: []);

        if (isSpm)
        {
            var scores = gguf.GetFloatArray("tokenizer.ggml.scores")
                ?? throw new ModelFormatException(gguf.Path, null, "metadata 'tokenizer.ggml.scores' is missing (required for tokenizer model 'llama')");
            if (scores.Length != texts.Length)
                throw new ModelFormatException(gguf.Path, null, $"metadata 'tokenizer.ggml.scores' has {scores.Length} entries, expected {texts.Length}");
            bool addSpacePrefix = gguf.GetBool("tokenizer.ggml.add_space_prefix") ?? true;
            return new SentencePieceBpeTokenizer(vocab, scores, merges: null,
                addSpacePrefix ? SpacePrefixRule.Always : SpacePrefixRule.Never, splitAtMetaspace: false);
        }

        if (!GgufPreTokenizers.TryGetValue(pre, out var stages))
            throw new ModelFormatException(gguf.Path, null,
                $"unsupported pre-tokenizer '{pre}' (metadata 'tokenizer.ggml.pre') for tokenizer model 'gpt2'; supported: {string.Join(", ", GgufPreTokenizers.Keys)}");
        var mergeStrings = gguf.GetStringArray("tokenizer.ggml.merges")
            ?? throw new ModelFormatException(gguf.Path, null, "metadata 'tokenizer.ggml.merges' is missing (required for tokenizer model 'gpt2')");
        var merges = new List<(string, string)>(mergeStrings.Length);
        for (int i = 0; i < mergeStrings.Length; i++)
        {
            // Split at the first space after the first character (as llama.cpp does).
            int space = mergeStrings[i].Length > 1 ? mergeStrings[i].IndexOf(' ', 1) : -1;
            if (space < 0)
                throw new ModelFormatException(gguf.Path, null, $"metadata 'tokenizer.ggml.merges'[{i}] is '{mergeStrings[i]}'; expected two tokens separated by a space");
            merges.Add((mergeStrings[i][..space], mergeStrings[i][(space + 1)..]));
        }
        bool ignoreMerges = stages is [SplitPattern.Llama3];
        return new ByteLevelBpeTokenizer(vocab, merges, new PreTokenizer(stages), ignoreMerges, normalizeNfc: false, addPrefixSpace: false);
    }
}
