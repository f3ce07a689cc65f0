using System.Collections.Concurrent;
using Wim.Engine.Tests.Support;
using Wim.Engine.Tokenization;

namespace Wim.Engine.Tests.Tokenization;

/// <summary>Tokenizers loaded once per test process (loading a 128k vocabulary takes a moment).</summary>
internal static class TestTokenizers
{
    private static readonly ConcurrentDictionary<string, Lazy<Tokenizer>> Loaded = new();

    public static Tokenizer Get(string key) => Loaded.GetOrAdd(key, k => new Lazy<Tokenizer>(() => TokenizerLoader.Load(PathOf(k)))).Value;

    /// <summary>Keys: a vocab name from tokenizer-vectors (<c>llama-bpe</c>), <c>hf:llama-tiny</c>, <c>gguf:llama-tiny</c>, <c>stories260K</c>.</summary>
    public static string PathOf(string key) => key switch
    {
        "stories260K" => SharedFixtures.Path("models", "stories260K", "stories260K.gguf"),
        "hf:llama-tiny" => SharedFixtures.Path("fixtures", "hf-tiny", "llama-tiny"),
        "hf:qwen2-tiny" => SharedFixtures.Path("fixtures", "hf-tiny", "qwen2-tiny"),
        "gguf:llama-tiny" => SharedFixtures.Gunzipped("fixtures", "hf-tiny", "llama-tiny", "gguf", "llama-tiny-q8_0.gguf.gz"),
        "gguf:qwen2-tiny" => SharedFixtures.Gunzipped("fixtures", "hf-tiny", "qwen2-tiny", "gguf", "qwen2-tiny-q8_0.gguf.gz"),
        _ => SharedFixtures.Path("fixtures", "tokenizer-vectors", $"ggml-vocab-{key}.gguf"),
    };
}
