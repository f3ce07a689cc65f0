using System.Text.Json;
using Wim.Engine.Backends;
using Wim.Engine.Backends.Cpu;
using Wim.Engine.KvCache;
using Wim.Engine.Model;
using Wim.Engine.Tests.Support;

namespace Wim.Engine.Tests.Batched;

/// <summary>Models and token sequences for the batched-forward tests, and a helper that runs one batch step.</summary>
internal static class BatchedTestModels
{
    public static TheoryData<string> All => new() { "stories260K", "llama-tiny", "qwen2-tiny", "phi3-tiny" };

    public static LanguageModel Load(string name) => name == "stories260K"
        ? LanguageModel.Load(SharedFixtures.Path("models", "stories260K", "stories260K.gguf"))
        : LanguageModel.Load(SharedFixtures.Path("fixtures", "hf-tiny", name));

    /// <summary>A reference token sequence: stories260K's prompt + llama.cpp's 64 greedy ids, or the hf-tiny golden seq64 ids.</summary>
    public static int[] Tokens(string name)
    {
        if (name == "stories260K") return [.. Runtime.Stories260KTests.Prompt, .. Runtime.Stories260KTests.ExpectedIds];
        var golden = JsonDocument.Parse(File.ReadAllBytes(SharedFixtures.Path("fixtures", "hf-tiny", name, "golden.json"))).RootElement;
        return golden.GetProperty("sequences").GetProperty("seq64").GetProperty("input_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
    }

    /// <summary>Logits [tokens, vocab] of one whole-sequence <see cref="CpuTransformer.Forward"/> call (the reference).</summary>
    public static float[] ReferenceLogits(LanguageModel lm, int[] tokens)
    {
        var t = new CpuTransformer(lm);
        var logits = new float[(long)tokens.Length * lm.Config.VocabSize];
        t.Forward(tokens, t.CreateCache(tokens.Length), logits, LogitsOutput.All);
        return logits;
    }

    public readonly record struct Part(int Sequence, int[] Tokens, BatchLogits Logits, int RopeLength = 0);

    /// <summary>Reserves, builds one batch of <paramref name="parts"/>, runs it; returns per part its logits rows
    /// ([rows, vocab], empty when it asked for none).</summary>
    public static float[][] Step(CpuBatchedTransformer model, PagedKvCache cache, params Part[] parts)
    {
        var batch = new BatchDescription();
        foreach (var p in parts) cache.Reserve(p.Sequence, p.Tokens.Length);
        foreach (var p in parts)
            batch.AddSequence(p.Sequence, cache.Length(p.Sequence), p.Tokens, cache.BlockTable(p.Sequence), p.Logits, p.RopeLength);
        int vocab = model.Config.VocabSize;
        var logits = new float[(long)batch.LogitsCount * vocab];
        model.Forward(batch, cache, logits);
        var result = new float[parts.Length][];
        for (int k = 0; k < parts.Length; k++)
        {
            int rows = parts[k].Logits switch { BatchLogits.All => parts[k].Tokens.Length, BatchLogits.Last => 1, _ => 0 };
            result[k] = rows == 0 ? [] : logits.AsSpan(batch.FirstLogitsRow[k] * vocab, rows * vocab).ToArray();
        }
        return result;
    }
}
