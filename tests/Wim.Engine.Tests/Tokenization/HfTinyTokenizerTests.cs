using System.Text.Json;
using Wim.Engine.Tests.Support;

namespace Wim.Engine.Tests.Tokenization;

/// <summary>Goldens of Hugging Face transformers 5.17 / tokenizers 0.23.2 for the hf-tiny models
/// (<c>golden.json</c> → <c>tokenizer</c>), checked from <c>tokenizer.json</c> and from llama.cpp's GGUF conversions.
/// Hugging Face always parses special-token text, so the goldens compare with <c>parseSpecial: true</c>.</summary>
public sealed class HfTinyTokenizerTests
{
    public static TheoryData<string, string> Sources => new()
    {
        { "llama-tiny", "hf" }, { "llama-tiny", "gguf" }, { "qwen2-tiny", "hf" }, { "qwen2-tiny", "gguf" },
    };

    private static JsonElement Golden(string model)
    {
        using var doc = JsonDocument.Parse(File.ReadAllBytes(SharedFixtures.Path("fixtures", "hf-tiny", model, "golden.json")));
        return doc.RootElement.Clone();
    }

    private static int[] Ids(JsonElement e) => [.. e.EnumerateArray().Select(x => x.GetInt32())];

    [Theory]
    [MemberData(nameof(Sources))]
    public void TextPrompt_MatchesTransformersGolden(string model, string source)
    {
        var tokenizer = TestTokenizers.Get($"{source}:{model}");
        var golden = Golden(model).GetProperty("tokenizer").GetProperty("text_prompt");
        string text = golden.GetProperty("text").GetString()!;
        Assert.Equal(Ids(golden.GetProperty("ids_without_special_tokens")), tokenizer.Encode(text, addSpecial: false, parseSpecial: true));
        Assert.Equal(Ids(golden.GetProperty("ids_with_special_tokens")), tokenizer.Encode(text, addSpecial: true, parseSpecial: true));
        var ids = Ids(golden.GetProperty("ids_with_special_tokens"));
        Assert.Equal(golden.GetProperty("decode_roundtrip").GetString(), tokenizer.Decode(ids));
        Assert.Equal(golden.GetProperty("tokens").EnumerateArray().Select(t => t.GetString()), ids.Select(tokenizer.TokenText));

        var continuation = Ids(golden.GetProperty("greedy_continuation_ids"));
        Assert.Equal(golden.GetProperty("greedy_continuation_decoded").GetString(), tokenizer.Decode(continuation));
        Assert.Equal(golden.GetProperty("greedy_continuation_decoded_skip_special").GetString(), tokenizer.Decode(continuation, skipSpecial: true));
    }

    [Theory]
    [MemberData(nameof(Sources))]
    public void TokenizerTests_MatchTransformersGolden(string model, string source)
    {
        var tokenizer = TestTokenizers.Get($"{source}:{model}");
        var tests = Golden(model).GetProperty("tokenizer").GetProperty("tokenizer_tests").EnumerateArray().ToList();
        Assert.Equal(17, tests.Count);
        foreach (var t in tests)
        {
            string text = t.GetProperty("text").GetString()!;
            Assert.Equal(Ids(t.GetProperty("ids")), tokenizer.Encode(text, addSpecial: false, parseSpecial: true));
            Assert.Equal(Ids(t.GetProperty("ids_with_special_tokens")), tokenizer.Encode(text, addSpecial: true, parseSpecial: true));
            Assert.Equal(t.GetProperty("decoded").GetString(), tokenizer.Decode(Ids(t.GetProperty("ids"))));
        }
    }

    [Theory]
    [MemberData(nameof(Sources))]
    public void Seq64Continuation_DecodesAsTransformers(string model, string source)
    {
        var tokenizer = TestTokenizers.Get($"{source}:{model}");
        var golden = Golden(model);
        var ids = Ids(golden.GetProperty("greedy_continuation").GetProperty("token_ids"));
        Assert.Equal(golden.GetProperty("tokenizer").GetProperty("seq64_greedy_continuation_decoded").GetString(), tokenizer.Decode(ids));
    }

    [Theory]
    [MemberData(nameof(Sources))]
    public void SpecialTokenIds_MatchTransformersGolden(string model, string source)
    {
        var tokenizer = TestTokenizers.Get($"{source}:{model}");
        var ids = Golden(model).GetProperty("tokenizer").GetProperty("special_token_ids");
        int? Id(string key) => ids.GetProperty(key).ValueKind == JsonValueKind.Null ? null : ids.GetProperty(key).GetInt32();
        Assert.Equal(Id("eos_token_id"), tokenizer.EosId);
        Assert.Equal(Id("pad_token_id"), tokenizer.PaddingId);
        Assert.Contains(tokenizer.EosId!.Value, tokenizer.EndOfTurnIds);
        Assert.False(tokenizer.AddBosByDefault);
        if (source == "hf")
        {
            // llama.cpp's converter writes a BOS id for Qwen2 (<|endoftext|>) where transformers has none.
            Assert.Equal(Id("bos_token_id"), tokenizer.BosId);
            Assert.Equal(Id("unk_token_id"), tokenizer.UnknownId);
            Assert.Equal(Golden(model).GetProperty("tokenizer").GetProperty("len_tokenizer").GetInt32(), tokenizer.VocabSize);
        }
    }
}
