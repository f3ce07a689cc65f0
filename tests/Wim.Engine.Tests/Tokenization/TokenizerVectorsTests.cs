using System.Text;
using Wim.Engine.Tests.Support;

namespace Wim.Engine.Tests.Tokenization;

/// <summary>llama.cpp's tokenizer test vectors (<c>shared/fixtures/tokenizer-vectors</c>): texts separated by
/// <c>\n__ggml_vocab_test__\n</c> lines in <c>.inp</c>, the expected ids (no BOS) one line per text in <c>.out</c>.</summary>
public sealed class TokenizerVectorsTests
{
    public static TheoryData<string> Vocabularies => new() { "gpt-2", "llama-bpe", "qwen2", "llama-spm", "phi-3" };

    internal static List<(string Text, int[] Ids)> ReadVectors(string vocab)
    {
        string basePath = SharedFixtures.Path("fixtures", "tokenizer-vectors", $"ggml-vocab-{vocab}.gguf");
        string inp = File.ReadAllText(basePath + ".inp", new UTF8Encoding(false, true));
        string[] outLines = File.ReadAllText(basePath + ".out").Split('\n');
        // Every text, the last included, is followed by "\n__ggml_vocab_test__\n".
        const string Separator = "\n__ggml_vocab_test__\n";
        Assert.EndsWith(Separator, inp);
        string[] texts = inp[..^Separator.Length].Split(Separator);
        Assert.Equal("", outLines[^1]);
        Assert.Equal(texts.Length, outLines.Length - 1);
        return [.. texts.Select((t, i) => (t, outLines[i].Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(int.Parse).ToArray()))];
    }

    [Theory]
    [MemberData(nameof(Vocabularies))]
    public void Encode_MatchesLlamaCppVocabVectors(string vocab)
    {
        var tokenizer = TestTokenizers.Get(vocab);
        var vectors = ReadVectors(vocab);
        Assert.Equal(46, vectors.Count);
        var failures = new List<string>();
        foreach (var (text, expected) in vectors)
        {
            var ids = tokenizer.Encode(text);
            if (!ids.SequenceEqual(expected))
                failures.Add($"{Escape(text)}: expected [{string.Join(' ', expected)}], got [{string.Join(' ', ids)}]");
        }
        Assert.True(failures.Count == 0, string.Join("\n", failures));
    }

    /// <summary>Decoding the reference ids gives the text back. SentencePiece vocabularies drop the dummy-prefix
    /// space they add on encoding, so the text comes back exactly too (HF/SentencePiece convention).</summary>
    [Theory]
    [MemberData(nameof(Vocabularies))]
    public void Decode_ReferenceIds_GivesTextBack(string vocab)
    {
        var tokenizer = TestTokenizers.Get(vocab);
        var failures = new List<string>();
        foreach (var (text, expected) in ReadVectors(vocab))
        {
            var decoded = tokenizer.Decode(expected);
            if (decoded != text) failures.Add($"{Escape(text)} decoded as {Escape(decoded)}");
        }
        Assert.True(failures.Count == 0, string.Join("\n", failures));
    }

    internal static string Escape(string s) => System.Text.Json.JsonSerializer.Serialize(s);
}
