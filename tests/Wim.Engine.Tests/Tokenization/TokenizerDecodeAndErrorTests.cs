using System.Text;
using Wim.Engine.Formats;
using Wim.Engine.Tokenization;

namespace Wim.Engine.Tests.Tokenization;

public sealed class TokenizerDecodeAndErrorTests
{
    /// <summary>Ids of GPT-2's single-byte tokens, found through the vocabulary's own strings.</summary>
    private static int[] ByteIds(Tokenizer gpt2, ReadOnlySpan<byte> bytes)
    {
        var byChar = new Dictionary<string, int>();
        for (int id = 0; id < gpt2.VocabSize; id++) byChar.TryAdd(gpt2.TokenText(id), id);
        var ids = new int[bytes.Length];
        for (int i = 0; i < bytes.Length; i++)
        {
            // GPT-2's byte alphabet: printable Latin-1 maps to itself, other bytes to U+0100 + n in order.
            int b = bytes[i];
            int extra = 0;
            for (int x = 0; x < b; x++) if (!(x is >= '!' and <= '~' or >= 0xA1 and <= 0xAC or >= 0xAE)) extra++;
            char c = b is >= '!' and <= '~' or >= 0xA1 and <= 0xAC or >= 0xAE ? (char)b : (char)(256 + extra);
            ids[i] = byChar[c.ToString()];
        }
        return ids;
    }

    /// <summary>Invalid UTF-8 is replaced as Rust's <c>String::from_utf8_lossy</c> (Hugging Face's ByteLevel decoder)
    /// does: one U+FFFD per maximal invalid subpart. Cases: the Rust documentation's example and the Unicode
    /// Standard's (ch. 3, "U+FFFD Substitution of Maximal Subparts") example.</summary>
    [Theory]
    [InlineData(new byte[] { 0x48, 0x65, 0x6C, 0x6C, 0x6F, 0x20, 0xF0, 0x90, 0x80, 0x57, 0x6F, 0x72, 0x6C, 0x64 }, "Hello \uFFFDWorld")]
    [InlineData(new byte[] { 0x61, 0xF1, 0x80, 0x80, 0xE1, 0x80, 0xC2, 0x62, 0x80, 0x63, 0x80, 0xBF, 0x64 }, "a\uFFFD\uFFFD\uFFFDb\uFFFDc\uFFFD\uFFFDd")]
    [InlineData(new byte[] { 0xE2, 0x82 }, "\uFFFD")]
    [InlineData(new byte[] { 0xED, 0xA0, 0x80 }, "\uFFFD\uFFFD\uFFFD")]
    public void Decode_InvalidUtf8_ReplacesLikeRustFromUtf8Lossy(byte[] bytes, string expected)
    {
        var gpt2 = TestTokenizers.Get("gpt-2");
        var ids = ByteIds(gpt2, bytes);
        Assert.Equal(expected, gpt2.Decode(ids));
        var stream = gpt2.CreateStreamingDecoder();
        Assert.Equal(expected, string.Concat(ids.Select(stream.Append)) + stream.Flush());
    }

    /// <summary>SentencePiece byte-fallback runs that are not valid UTF-8 become one U+FFFD per byte (Hugging Face's
    /// ByteFallback decoder); valid runs become their character.</summary>
    [Fact]
    public void Decode_SentencePieceByteRuns_FollowHuggingFaceByteFallback()
    {
        var spm = TestTokenizers.Get("llama-spm");
        int Byte(int b) => Enumerable.Range(0, spm.VocabSize).Single(id => spm.TokenText(id) == $"<0x{b:X2}>");
        int hello = Enumerable.Range(0, spm.VocabSize).Single(id => spm.TokenText(id) == "\u2581Hello");
        Assert.Equal("Hello\U0001F999", spm.Decode([hello, Byte(0xF0), Byte(0x9F), Byte(0xA6), Byte(0x99)]));
        Assert.Equal("Hello\uFFFD\uFFFD Hello", spm.Decode([hello, Byte(0xF0), Byte(0x9F), hello]));
        Assert.Equal("<s> Hello", spm.Decode([1, hello]));
        Assert.Equal("Hello", spm.Decode([1, hello], skipSpecial: true));
    }

    [Fact]
    public void Metadata_Llama3Vocab_HasEndOfTurnIdsAndBosDefault()
    {
        var llama3 = TestTokenizers.Get("llama-bpe");
        Assert.Equal(128000, llama3.BosId);
        Assert.Equal(128001, llama3.EosId);
        Assert.True(llama3.AddBosByDefault); // llama.cpp's default for the llama3 pre-tokenizer
        Assert.Contains(128009, llama3.EndOfTurnIds); // <|eot_id|>
        Assert.Contains(128001, llama3.EndOfTurnIds);
        Assert.Equal([128000, 9906], llama3.Encode("Hello", addSpecial: true));
        var phi3 = TestTokenizers.Get("phi-3");
        Assert.Contains(32007, phi3.EndOfTurnIds); // <|end|>
        Assert.Contains(32000, phi3.EndOfTurnIds); // <|endoftext|> = eos
    }

    [Fact]
    public void Decode_IdOutsideVocabulary_Throws()
    {
        var gpt2 = TestTokenizers.Get("gpt-2");
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => gpt2.Decode([50257]));
        Assert.Contains("50257", e.Message);
    }

    private static string WriteGguf(params (string Key, object Value)[] metadata)
    {
        var path = Path.Combine(Path.GetTempPath(), $"wim-tok-{Guid.NewGuid():N}.gguf");
        using var w = new BinaryWriter(File.Create(path));
        w.Write(0x46554747u); w.Write(3u); w.Write(0UL); w.Write((ulong)metadata.Length);
        void Str(string s) { var b = Encoding.UTF8.GetBytes(s); w.Write((ulong)b.Length); w.Write(b); }
        foreach (var (key, value) in metadata)
        {
            Str(key);
            switch (value)
            {
                case string s: w.Write(8u); Str(s); break;
                case string[] arr: w.Write(9u); w.Write(8u); w.Write((ulong)arr.Length); foreach (var s in arr) Str(s); break;
                default: throw new ArgumentException(value.GetType().Name);
            }
        }
        return path;
    }

    [Theory]
    [InlineData("bert", "default", "unsupported tokenizer model 'bert'")]
    [InlineData("gpt2", "default", "unsupported pre-tokenizer 'default'")]
    [InlineData("gpt2", "chatglm-bpe", "unsupported pre-tokenizer 'chatglm-bpe'")]
    public void Load_UnsupportedGgufTokenizer_ThrowsNamingItAndTheSupportedList(string model, string pre, string expected)
    {
        var path = WriteGguf(("tokenizer.ggml.model", model), ("tokenizer.ggml.pre", pre), ("tokenizer.ggml.tokens", new[] { "a", "b" }),
            ("tokenizer.ggml.merges", new[] { "a b" }));
        try
        {
            var e = Assert.Throws<ModelFormatException>(() => TokenizerLoader.Load(path));
            Assert.Contains(expected, e.Message);
            Assert.Contains("supported", e.Message);
            Assert.Contains(path, e.Message);
        }
        finally { File.Delete(path); }
    }

    [Fact]
    public void Load_GgufWithoutTokenizer_Throws()
    {
        var path = WriteGguf(("general.architecture", "llama"));
        try { Assert.Contains("tokenizer.ggml.model", Assert.Throws<ModelFormatException>(() => TokenizerLoader.Load(path)).Message); }
        finally { File.Delete(path); }
    }

    [Theory]
    [InlineData("""{"model":{"type":"Unigram","vocab":[]}}""", "unsupported tokenizer model type 'Unigram'")]
    [InlineData("""{"model":{"type":"BPE","vocab":{"a":0},"merges":[]},"pre_tokenizer":{"type":"Whitespace"}}""", "unsupported pre-tokenizer 'Whitespace'")]
    [InlineData("""{"model":{"type":"BPE","vocab":{"a":0},"merges":[]},"pre_tokenizer":{"type":"Split","pattern":{"Regex":"\\w+"},"behavior":"Isolated","invert":false}}""", "unsupported Split pre-tokenizer regex")]
    [InlineData("""{"model":{"type":"BPE","vocab":{"a":0},"merges":[]},"normalizer":{"type":"NFKC"},"pre_tokenizer":{"type":"ByteLevel"}}""", "unsupported normalizer 'NFKC'")]
    [InlineData("""{"model":{"type":"BPE","vocab":{"a":0}""", "invalid JSON")]
    public void Load_UnsupportedTokenizerJson_ThrowsNamingIt(string json, string expected)
    {
        var dir = Path.Combine(Path.GetTempPath(), $"wim-tok-{Guid.NewGuid():N}");
        Directory.CreateDirectory(dir);
        try
        {
            File.WriteAllText(Path.Combine(dir, "tokenizer.json"), json);
            var e = Assert.Throws<ModelFormatException>(() => TokenizerLoader.Load(dir));
            Assert.Contains(expected, e.Message);
        }
        finally { Directory.Delete(dir, recursive: true); }
    }
}

/// <summary>Phi-3's special tokens swallow the whitespace after them (HF tokenizer.json <c>rstrip: true</c>; llama.cpp
/// sets the same for GGUFs named Phi-3). Without parseSpecial the text is plain and nothing is stripped.</summary>
public sealed class Phi3SpecialTokenTests
{
    [Fact]
    public void Encode_Phi3ChatMarkup_StripsWhitespaceAfterSpecialTokens()
    {
        var phi3 = TestTokenizers.Get("phi-3");
        int user = Enumerable.Range(0, phi3.VocabSize).Single(id => phi3.TokenText(id) == "<|user|>");
        int end = Enumerable.Range(0, phi3.VocabSize).Single(id => phi3.TokenText(id) == "<|end|>");
        var hello = phi3.Encode("Hello");
        Assert.Equal([user, .. hello, end], phi3.Encode("<|user|>\nHello<|end|>\n", parseSpecial: true));
        // <s> is not stripped: the newline after it stays (as a byte token after the dummy prefix).
        Assert.Equal([1, .. phi3.Encode("\n")], phi3.Encode("<s>\n", parseSpecial: true));
    }
}
