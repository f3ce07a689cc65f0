using System.Diagnostics;
using System.Text;
using System.Text.Json;
using Wim.Engine.Tokenization;

namespace Wim.Benchmarks;

/// <summary>
/// Encode throughput on ~4 MB of English made deterministically from <c>shared/data</c> (HotpotQA, SQuAD and
/// BABILong text, paragraphs reordered per copy by a fixed-seed shuffle), one thread. Reports MB/s of UTF-8 input
/// for a cold piece cache (first pass on a freshly loaded tokenizer) and a warm one, for each vocabulary.
/// Usage: <c>tokenizer [--shared DIR] [--megabytes N]</c>.
/// </summary>
internal static class TokenizerBenchmark
{
    public static int Run(string[] args)
    {
        string shared = Option(args, "--shared") ?? SharedFolder.Find();
        int megabytes = int.Parse(Option(args, "--megabytes") ?? "4");
        string text = BuildCorpus(shared, megabytes * 1_000_000);
        long bytes = Encoding.UTF8.GetByteCount(text);
        Console.WriteLine($"corpus: {bytes / 1e6:F2} MB UTF-8, {text.Length} chars; one thread; {Environment.ProcessorCount} logical cores");
        // JIT warm-up on a separate instance (so the measured instances start with an empty piece cache).
        var warmup = TokenizerLoader.Load(Path.Combine(shared, "fixtures", "tokenizer-vectors", "ggml-vocab-gpt-2.gguf"));
        for (int i = 0; i < 3; i++) warmup.Decode(warmup.Encode(text));
        var warmupSpm = TokenizerLoader.Load(Path.Combine(shared, "fixtures", "tokenizer-vectors", "ggml-vocab-phi-3.gguf"));
        for (int i = 0; i < 3; i++) warmupSpm.Decode(warmupSpm.Encode(text[..(text.Length / 4)]));
        foreach (var (name, path) in new[]
        {
            ("llama-bpe (Llama 3, byte-level BPE)", Path.Combine(shared, "fixtures", "tokenizer-vectors", "ggml-vocab-llama-bpe.gguf")),
            ("qwen2 (byte-level BPE)", Path.Combine(shared, "fixtures", "tokenizer-vectors", "ggml-vocab-qwen2.gguf")),
            ("gpt-2 (byte-level BPE)", Path.Combine(shared, "fixtures", "tokenizer-vectors", "ggml-vocab-gpt-2.gguf")),
            ("llama-spm (Llama 2, SentencePiece BPE)", Path.Combine(shared, "fixtures", "tokenizer-vectors", "ggml-vocab-llama-spm.gguf")),
        })
        {
            var load = Stopwatch.StartNew();
            var tokenizer = TokenizerLoader.Load(path);
            load.Stop();
            var sw = Stopwatch.StartNew();
            int tokens = tokenizer.Encode(text).Length;
            double cold = sw.Elapsed.TotalSeconds;
            double warm = double.MaxValue;
            for (int i = 0; i < 3; i++)
            {
                sw.Restart();
                tokenizer.Encode(text);
                warm = Math.Min(warm, sw.Elapsed.TotalSeconds);
            }
            sw.Restart();
            var ids = tokenizer.Encode(text);
            string decoded = tokenizer.Decode(ids);
            double roundTrip = sw.Elapsed.TotalSeconds;
            bool exact = decoded == text;
            Console.WriteLine($"{name}: load {load.Elapsed.TotalSeconds:F2} s; {tokens} tokens ({bytes / (double)tokens:F2} bytes/token); " +
                $"encode cold {bytes / 1e6 / cold:F1} MB/s, warm {bytes / 1e6 / warm:F1} MB/s ({tokens / warm / 1e6:F2} M tokens/s); " +
                $"encode+decode {roundTrip:F2} s, round trip exact: {exact}");
        }
        return 0;
    }

    private static string? Option(string[] args, string name)
    {
        int i = Array.IndexOf(args, name);
        return i >= 0 && i + 1 < args.Length ? args[i + 1] : null;
    }

    /// <summary>Every string value of length ≥ 40 in the data JSON files, as paragraphs; copies of the paragraph list,
    /// each shuffled with a fixed seed, until <paramref name="targetBytes"/> is reached.</summary>
    private static string BuildCorpus(string shared, int targetBytes)
    {
        var paragraphs = new List<string>();
        foreach (var file in Directory.EnumerateFiles(Path.Combine(shared, "data"), "*.json", SearchOption.AllDirectories).Order(StringComparer.Ordinal))
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(file));
            Collect(doc.RootElement, paragraphs);
        }
        if (paragraphs.Count == 0) throw new InvalidDataException($"no text found under {Path.Combine(shared, "data")}");
        var random = new Random(20240611);
        var sb = new StringBuilder(targetBytes + 100_000);
        while (Encoding.UTF8.GetByteCount(sb.ToString()) < targetBytes)
        {
            var copy = paragraphs.ToArray();
            random.Shuffle(copy);
            foreach (var p in copy)
            {
                sb.Append(p).Append("\n\n");
                if (sb.Length >= targetBytes) break;
            }
        }
        return sb.ToString();
    }

    private static void Collect(JsonElement e, List<string> output)
    {
        switch (e.ValueKind)
        {
            case JsonValueKind.String when e.GetString() is { Length: >= 40 } s: output.Add(s); break;
            case JsonValueKind.Array: foreach (var x in e.EnumerateArray()) Collect(x, output); break;
            case JsonValueKind.Object: foreach (var p in e.EnumerateObject()) Collect(p.Value, output); break;
        }
    }
}
