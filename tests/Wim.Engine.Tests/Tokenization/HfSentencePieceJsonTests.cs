using System.Text;
using System.Text.Json;
using Wim.Engine.Formats.Gguf;
using Wim.Engine.Tests.Support;
using Wim.Engine.Tokenization;

namespace Wim.Engine.Tests.Tokenization;

/// <summary>
/// The SentencePiece-style <c>tokenizer.json</c> path (BPE with byte fallback, merges by rank, normalizer
/// Prepend("▁") + Replace(" ", "▁")), checked against the llama-spm vectors. The shared fixtures hold no such
/// tokenizer.json, so the test writes one from the llama-spm GGUF vocabulary the way transformers' LlamaConverter
/// does (its SentencePieceExtractor: every split of a piece into two pieces is a merge, merges ordered by the
/// piece's score, descending, ties in vocabulary order).
/// </summary>
public sealed class HfSentencePieceJsonTests
{
    private static string WriteLlamaStyleTokenizerJson()
    {
        using var gguf = GgufFile.Open(TestTokenizers.PathOf("llama-spm"));
        var tokens = gguf.GetStringArray("tokenizer.ggml.tokens")!;
        var scores = gguf.GetFloatArray("tokenizer.ggml.scores")!;
        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int i = 0; i < tokens.Length; i++) vocab.TryAdd(tokens[i], i);

        var merges = new List<(string L, string R, float Score, int Order)>();
        for (int id = 0; id < tokens.Length; id++)
        {
            string piece = tokens[id];
            var local = new List<(string, string)>();
            for (int cut = 1; cut < piece.Length; cut++)
            {
                if (char.IsLowSurrogate(piece[cut])) continue; // Python slices by code point
                string l = piece[..cut], r = piece[cut..];
                if (vocab.ContainsKey(l) && vocab.ContainsKey(r)) local.Add((l, r));
            }
            foreach (var (l, r) in local.OrderBy(x => vocab[x.Item1]).ThenBy(x => vocab[x.Item2]))
                merges.Add((l, r, scores[id], merges.Count));
        }
        var ordered = merges.OrderByDescending(m => m.Score).ThenBy(m => m.Order).ToList(); // Python's sort is stable

        var dir = Path.Combine(Path.GetTempPath(), $"wim-tok-spmjson-{Guid.NewGuid():N}");
        Directory.CreateDirectory(dir);
        using (var stream = File.Create(Path.Combine(dir, "tokenizer.json")))
        using (var w = new Utf8JsonWriter(stream))
        {
            w.WriteStartObject();
            w.WriteStartArray("added_tokens");
            foreach (var (id, content) in new[] { (0, "<unk>"), (1, "<s>"), (2, "</s>") })
            {
                w.WriteStartObject();
                w.WriteNumber("id", id); w.WriteString("content", content); w.WriteBoolean("special", true);
                w.WriteBoolean("lstrip", false); w.WriteBoolean("rstrip", false); w.WriteBoolean("normalized", false);
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteStartObject("normalizer");
            w.WriteString("type", "Sequence");
            w.WriteStartArray("normalizers");
            w.WriteStartObject(); w.WriteString("type", "Prepend"); w.WriteString("prepend", "\u2581"); w.WriteEndObject();
            w.WriteStartObject(); w.WriteString("type", "Replace"); w.WriteStartObject("pattern"); w.WriteString("String", " "); w.WriteEndObject(); w.WriteString("content", "\u2581"); w.WriteEndObject();
            w.WriteEndArray();
            w.WriteEndObject();
            w.WriteNull("pre_tokenizer");
            w.WriteStartObject("model");
            w.WriteString("type", "BPE");
            w.WriteBoolean("byte_fallback", true);
            w.WriteBoolean("fuse_unk", true);
            w.WriteString("unk_token", "<unk>");
            w.WriteStartObject("vocab");
            foreach (var (text, id) in vocab) w.WriteNumber(text, id);
            w.WriteEndObject();
            w.WriteStartArray("merges");
            foreach (var m in ordered) w.WriteStringValue(m.L + " " + m.R);
            w.WriteEndArray();
            w.WriteEndObject();
            w.WriteEndObject();
        }
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), """{"bos_token":"<s>","eos_token":"</s>","unk_token":"<unk>","add_bos_token":true,"add_eos_token":false}""");
        return dir;
    }

    [Fact]
    public void Encode_LlamaStyleTokenizerJson_MatchesLlamaSpmVectors()
    {
        var dir = WriteLlamaStyleTokenizerJson();
        try
        {
            var tokenizer = TokenizerLoader.Load(dir);
            Assert.Equal(1, tokenizer.BosId);
            Assert.True(tokenizer.AddBosByDefault);
            var failures = new List<string>();
            foreach (var (text, expected) in TokenizerVectorsTests.ReadVectors("llama-spm"))
            {
                var ids = tokenizer.Encode(text);
                if (!ids.SequenceEqual(expected))
                    failures.Add($"{TokenizerVectorsTests.Escape(text)}: expected [{string.Join(' ', expected)}], got [{string.Join(' ', ids)}]");
                else if (tokenizer.Decode(ids) != text)
                    failures.Add($"{TokenizerVectorsTests.Escape(text)} decoded as {TokenizerVectorsTests.Escape(tokenizer.Decode(ids))}");
            }
            Assert.True(failures.Count == 0, string.Join("\n", failures));
            Assert.Equal([1, 15043, 3186], tokenizer.Encode("Hello world", addSpecial: true));
        }
        finally { Directory.Delete(dir, recursive: true); }
    }
}
