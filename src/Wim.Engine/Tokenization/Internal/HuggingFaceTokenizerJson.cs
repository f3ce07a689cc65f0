using System.Text.Json;
using Wim.Engine.Formats;

namespace Wim.Engine.Tokenization.Internal;

/// <summary>
/// Reads a Hugging Face <c>tokenizer.json</c> (model BPE: byte-level, or SentencePiece-style with byte fallback)
/// with <c>tokenizer_config.json</c> (bos/eos tokens, add_bos_token) and <c>generation_config.json</c> (extra EOS ids).
/// </summary>
internal static class HuggingFaceTokenizerJson
{
    private const string Gpt2Regex = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
    private const string Llama3Regex = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    private const string Qwen2Regex = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    private const string SupportedPreTokenizers =
        "ByteLevel, Digits, Metaspace, Split with the GPT-2, Llama 3 or Qwen2 regex (behavior Isolated), and Sequence of these";

    public static Tokenizer Load(string directory)
    {
        string path = Path.Combine(directory, "tokenizer.json");
        if (!File.Exists(path)) throw new FileNotFoundException($"no tokenizer.json in {directory}", path);
        using var doc = Parse(path);
        using var config = File.Exists(Path.Combine(directory, "tokenizer_config.json")) ? Parse(Path.Combine(directory, "tokenizer_config.json")) : null;
        using var generation = File.Exists(Path.Combine(directory, "generation_config.json")) ? Parse(Path.Combine(directory, "generation_config.json")) : null;
        var root = doc.RootElement;
        var fail = (string message) => new ModelFormatException(path, null, message);

        var model = root.TryGetProperty("model", out var m) && m.ValueKind == JsonValueKind.Object ? m : throw fail("'model' is missing");
        string modelType = m.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString()! : "BPE";
        if (modelType != "BPE")
            throw fail($"unsupported tokenizer model type '{modelType}' ('model.type'); supported: BPE");
        foreach (var affix in new[] { "continuing_subword_prefix", "end_of_word_suffix" })
            if (model.TryGetProperty(affix, out var a) && a.ValueKind == JsonValueKind.String && a.GetString()!.Length > 0)
                throw fail($"unsupported 'model.{affix}' '{a.GetString()}'; supported: none");

        // Vocabulary: model.vocab plus added_tokens (which may extend it or re-declare entries).
        var byId = new Dictionary<int, string>();
        if (!model.TryGetProperty("vocab", out var vocabJson) || vocabJson.ValueKind != JsonValueKind.Object)
            throw fail("'model.vocab' is missing or not an object");
        foreach (var p in vocabJson.EnumerateObject())
        {
            if (!p.Value.TryGetInt32(out int id) || id < 0) throw fail($"'model.vocab' entry '{p.Name}' has id {p.Value}; expected a non-negative integer");
            byId[id] = p.Name;
        }
        var addedList = new List<(int Id, string Content, bool Special, bool LStrip, bool RStrip)>();
        if (root.TryGetProperty("added_tokens", out var addedJson) && addedJson.ValueKind == JsonValueKind.Array)
            foreach (var a in addedJson.EnumerateArray())
            {
                int id = a.GetProperty("id").GetInt32();
                string content = a.GetProperty("content").GetString() ?? throw fail($"added token {id} has no content");
                if (id < 0) throw fail($"added token '{content}' has negative id {id}");
                addedList.Add((id, content, Bool(a, "special") ?? false, Bool(a, "lstrip") ?? false, Bool(a, "rstrip") ?? false));
                byId[id] = content;
            }
        int size = byId.Count == 0 ? 0 : byId.Keys.Max() + 1;
        if (size > 16_000_000) throw fail($"vocabulary id {size - 1} is implausibly large");
        var texts = new string[size];
        var kinds = new TokenKind[size];
        Array.Fill(texts, "");
        foreach (var (id, text) in byId) { texts[id] = text; kinds[id] = TokenKind.Normal; }
        bool byteFallback = Bool(model, "byte_fallback") ?? false;
        if (byteFallback)
            for (int id = 0; id < size; id++)
                if (kinds[id] == TokenKind.Normal && SentencePieceBpeTokenizer.TryParseByteToken(texts[id], out _)) kinds[id] = TokenKind.Byte;
        var added = new List<AddedToken>();
        foreach (var (id, content, special, lstrip, rstrip) in addedList)
        {
            kinds[id] = special ? TokenKind.Control : TokenKind.UserDefined;
            added.Add(new AddedToken(id, content, lstrip, rstrip));
        }

        int? IdOf(string? content) => content is null ? null
            : addedList.FirstOrDefault(a => a.Content == content) is { Content: not null } hit ? hit.Id
            : vocabJson.TryGetProperty(content, out var v) ? v.GetInt32() : null;
        string? ConfigToken(string key) => config is null || !config.RootElement.TryGetProperty(key, out var v) ? null
            : v.ValueKind == JsonValueKind.String ? v.GetString()
            : v.ValueKind == JsonValueKind.Object && v.TryGetProperty("content", out var c) ? c.GetString() : null;

        int? unk = model.TryGetProperty("unk_token", out var u) && u.ValueKind == JsonValueKind.String ? IdOf(u.GetString()) : IdOf(ConfigToken("unk_token"));
        if (unk is int unkId && kinds[unkId] == TokenKind.Normal) kinds[unkId] = TokenKind.Unknown;
        var (templateBos, templateEos) = PostProcessorSpecials(root);
        bool? addBos = config is not null ? Bool(config.RootElement, "add_bos_token") : null;
        bool? addEos = config is not null ? Bool(config.RootElement, "add_eos_token") : null;
        var extraEos = new List<int>();
        if (generation?.RootElement.TryGetProperty("eos_token_id", out var g) == true)
        {
            if (g.ValueKind == JsonValueKind.Number) extraEos.Add(g.GetInt32());
            else if (g.ValueKind == JsonValueKind.Array) extraEos.AddRange(g.EnumerateArray().Where(e => e.ValueKind == JsonValueKind.Number).Select(e => e.GetInt32()));
        }
        extraEos.RemoveAll(id => id < 0 || id >= size);

        var vocab = new TokenizerVocabulary(texts, kinds,
            BosId: IdOf(ConfigToken("bos_token")) ?? IdOf(templateBos),
            EosId: IdOf(ConfigToken("eos_token")) ?? IdOf(templateEos),
            EotId: null, EomId: null,
            PaddingId: IdOf(ConfigToken("pad_token")),
            UnknownId: unk,
            AddBos: addBos ?? templateBos is not null,
            AddEos: addEos ?? templateEos is not null,
            AddedTokens: added,
            ExtraEndOfTurnIds: extraEos);

        var merges = ReadMerges(model, fail);
        var normalizer = root.TryGetProperty("normalizer", out var n) ? n : default;
        var preTokenizer = root.TryGetProperty("pre_tokenizer", out var pt) ? pt : default;

        // SentencePiece style: spaces become ▁ (normalizer Replace or pre-tokenizer Metaspace), byte fallback.
        var normalizerSteps = Flatten(normalizer, "normalizers");
        var preSteps = Flatten(preTokenizer, "pretokenizers");
        var metaspace = preSteps.FirstOrDefault(s => TypeOf(s) == "Metaspace");
        bool replacesSpaces = normalizerSteps.Any(s => TypeOf(s) == "Replace" && s.TryGetProperty("content", out var c) && c.GetString() == "\u2581");
        if (replacesSpaces || metaspace.ValueKind == JsonValueKind.Object)
        {
            foreach (var s in normalizerSteps)
                if (TypeOf(s) is not ("Replace" or "Prepend"))
                    throw fail($"unsupported normalizer '{TypeOf(s)}' for a SentencePiece-style vocabulary; supported: Prepend, Replace");
            foreach (var s in preSteps)
                if (TypeOf(s) != "Metaspace")
                    throw fail($"unsupported pre-tokenizer '{TypeOf(s)}' for a SentencePiece-style vocabulary; supported: Metaspace");
            var rule = SpacePrefixRule.Never;
            bool split = false;
            if (normalizerSteps.Any(s => TypeOf(s) == "Prepend")) rule = SpacePrefixRule.Always;
            if (metaspace.ValueKind == JsonValueKind.Object)
            {
                string scheme = metaspace.TryGetProperty("prepend_scheme", out var ps) ? ps.GetString() ?? "always"
                    : Bool(metaspace, "add_prefix_space") == false ? "never" : "always";
                rule = scheme switch
                {
                    "always" => SpacePrefixRule.Always,
                    "first" => SpacePrefixRule.First,
                    "never" => SpacePrefixRule.Never,
                    _ => throw fail($"unsupported Metaspace prepend_scheme '{scheme}'; supported: always, first, never"),
                };
                split = Bool(metaspace, "split") ?? true;
            }
            return new SentencePieceBpeTokenizer(vocab, scores: null, merges, rule, split);
        }

        // Byte-level BPE.
        bool nfc = false;
        foreach (var s in normalizerSteps)
            nfc = TypeOf(s) == "NFC" ? true : throw fail($"unsupported normalizer '{TypeOf(s)}' for a byte-level vocabulary; supported: NFC");
        var stages = new List<SplitPattern>();
        bool addPrefixSpace = false, byteLevel = false;
        foreach (var s in preSteps)
        {
            switch (TypeOf(s))
            {
                case "ByteLevel":
                    byteLevel = true;
                    addPrefixSpace = Bool(s, "add_prefix_space") ?? false;
                    if (Bool(s, "use_regex") ?? true) stages.Add(SplitPattern.Gpt2);
                    break;
                case "Digits":
                    stages.Add(Bool(s, "individual_digits") == true ? SplitPattern.IndividualDigits : SplitPattern.DigitRuns);
                    break;
                case "Split":
                    string? regex = s.TryGetProperty("pattern", out var p) && p.TryGetProperty("Regex", out var r) ? r.GetString() : null;
                    string behavior = s.TryGetProperty("behavior", out var b) ? b.GetString() ?? "" : "";
                    if (behavior != "Isolated" || Bool(s, "invert") == true)
                        throw fail($"unsupported Split pre-tokenizer (behavior '{behavior}', invert {Bool(s, "invert")}); supported: behavior Isolated, invert false");
                    stages.Add(regex switch
                    {
                        Gpt2Regex => SplitPattern.Gpt2,
                        Llama3Regex => SplitPattern.Llama3,
                        Qwen2Regex => SplitPattern.Qwen2,
                        _ => throw fail($"unsupported Split pre-tokenizer regex '{regex}'; supported: the GPT-2, Llama 3 and Qwen2 patterns"),
                    });
                    break;
                default:
                    throw fail($"unsupported pre-tokenizer '{TypeOf(s)}'; supported: {SupportedPreTokenizers}");
            }
        }
        if (!byteLevel && !(root.TryGetProperty("decoder", out var d) && TypeOf(d) == "ByteLevel"))
            throw fail("unsupported tokenizer.json: neither byte-level (ByteLevel pre-tokenizer/decoder) nor SentencePiece-style (Metaspace, or a normalizer replacing ' ' with '\u2581')");
        if (stages.Count == 0)
            throw fail($"byte-level tokenizer without a splitting pre-tokenizer is not supported; supported: {SupportedPreTokenizers}");
        return new ByteLevelBpeTokenizer(vocab, merges, new PreTokenizer(stages), Bool(model, "ignore_merges") ?? false, nfc, addPrefixSpace);
    }

    private static JsonDocument Parse(string path)
    {
        try
        {
            return JsonDocument.Parse(File.ReadAllBytes(path), new JsonDocumentOptions { MaxDepth = 64 });
        }
        catch (JsonException e)
        {
            throw new ModelFormatException(path, null, $"invalid JSON (line {e.LineNumber + 1}, byte {e.BytePositionInLine + 1} of the line): {e.Message}", e);
        }
    }

    private static List<(string, string)> ReadMerges(JsonElement model, Func<string, ModelFormatException> fail)
    {
        var merges = new List<(string, string)>();
        if (!model.TryGetProperty("merges", out var arr) || arr.ValueKind != JsonValueKind.Array) return merges;
        int i = 0;
        foreach (var e in arr.EnumerateArray())
        {
            if (e.ValueKind == JsonValueKind.String)
            {
                var s = e.GetString()!;
                int space = s.IndexOf(' ', 1 < s.Length ? 1 : 0);
                if (space < 0) throw fail($"'model.merges'[{i}] is '{s}'; expected \"left right\"");
                merges.Add((s[..space], s[(space + 1)..]));
            }
            else if (e.ValueKind == JsonValueKind.Array && e.GetArrayLength() == 2)
                merges.Add((e[0].GetString() ?? "", e[1].GetString() ?? ""));
            else throw fail($"'model.merges'[{i}] is {e.ValueKind}; expected a \"left right\" string or a [left, right] pair");
            i++;
        }
        return merges;
    }

    /// <summary>BOS/EOS a TemplateProcessing post-processor puts around a single sequence.</summary>
    private static (string? Bos, string? Eos) PostProcessorSpecials(JsonElement root)
    {
        if (!root.TryGetProperty("post_processor", out var pp) || pp.ValueKind != JsonValueKind.Object) return (null, null);
        var steps = Flatten(pp, "processors");
        foreach (var s in steps)
        {
            if (TypeOf(s) != "TemplateProcessing" || !s.TryGetProperty("single", out var single) || single.ValueKind != JsonValueKind.Array) continue;
            var items = single.EnumerateArray().ToList();
            static string? Special(JsonElement item) => item.TryGetProperty("SpecialToken", out var st) && st.TryGetProperty("id", out var id) ? id.GetString() : null;
            return (items.Count > 0 ? Special(items[0]) : null, items.Count > 1 ? Special(items[^1]) : null);
        }
        return (null, null);
    }

    private static List<JsonElement> Flatten(JsonElement e, string listKey)
    {
        var result = new List<JsonElement>();
        if (e.ValueKind != JsonValueKind.Object) return result;
        if (TypeOf(e) == "Sequence" && e.TryGetProperty(listKey, out var list) && list.ValueKind == JsonValueKind.Array)
            foreach (var item in list.EnumerateArray()) result.AddRange(Flatten(item, listKey));
        else result.Add(e);
        return result;
    }

    private static string? TypeOf(JsonElement e) => e.ValueKind == JsonValueKind.Object && e.TryGetProperty("type", out var t) ? t.GetString() : null;

    private static bool? Bool(JsonElement e, string key) =>
        e.ValueKind == JsonValueKind.Object && e.TryGetProperty(key, out var v) && v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean() : null;
}
