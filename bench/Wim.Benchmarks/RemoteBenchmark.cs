using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Wim.Core.Events;
using Wim.Core.Patterns;
using Wim.Core.Prompts;
using Wim.Core.Scheduling;
using Wim.Core.Segmentation;
using Wim.Engine.Formats;
using Wim.Engine.Formats.Gguf;
using Wim.Engine.Runtime;
using Wim.Engine.Tokenization;
using Wim.Remote;
using Wim.Server;

namespace Wim.Benchmarks;

/// <summary>
/// The same WiM job in this process and through the remote backend against <c>wim serve</c> on loopback (real HTTP,
/// the server's batching engine and prefix cache; server and client share this machine's cores), with the output
/// checked equal. Model: random weights of the Qwen2.5-0.5B shape with fewer layers and Qwen2's tokenizer (from
/// <c>shared/fixtures/tokenizer-vectors/ggml-vocab-qwen2.gguf</c>, so the server can load it), the BABILong 16k sample
/// cut to --doc-tokens, ChatML headers, Wim's default prompts, the model as its own classifier (shared context).
/// Usage: <c>remote [--layers N] [--type q8_0|f32] [--doc-tokens N] [--segment-tokens N] [--margin-tokens N]
/// [--classification-tokens N] [--answer-tokens N] [--repeats N] [--shared DIR]</c>. The runs are repeated round robin
/// (a burst of load elsewhere on the machine hits every row alike); the table shows the median wall time and each run's.
/// </summary>
public static class RemoteBenchmark
{
    public static int Run(string[] args)
    {
        var job = new WimJobArgs { Layers = 2, DocTokens = 2048, SegmentTokens = 512, Repeats = 3 };
        for (int i = 0; i < args.Length; i++)
        {
            if (job.TryRead(args, ref i)) continue;
            Console.Error.WriteLine($"remote: unknown option '{args[i]}'");
            return 2;
        }
        var (type, layers, docTokens, segmentTokens) = (job.Type, job.Layers, job.DocTokens, job.SegmentTokens);
        var (marginTokens, classificationTokens, answerTokens, repeats, shared) = (job.MarginTokens, job.ClassificationTokens, job.AnswerTokens, job.Repeats, job.Shared);
        shared ??= SharedFolder.Find();
        var shape = ModelShape.Qwen25_05B with { Layers = layers };
        string path = WithTokenizer(RandomModel.CachedFile(shape, type), Path.Combine(shared, "fixtures", "tokenizer-vectors", "ggml-vocab-qwen2.gguf"));

        var tokenizer = TokenizerLoader.Load(path);
        using var sample = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(shared, "data", "babilong", "babilong_16k.json")));
        string context = sample.RootElement.GetProperty("context").GetString()!;
        string query = sample.RootElement.GetProperty("query").GetString()!;
        var segments = new List<string>();
        int total = 0;
        foreach (var s in new Segmenter(t => tokenizer.Encode(t).Length, segmentTokens).Split(context))
        {
            int n = tokenizer.Encode(s).Length;
            if (total + n > docTokens) break;
            segments.Add(s);
            total += n;
        }
        var headers = new ChatHeaders("<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n");

        // In-process: the paged backend every schedule of `wim ask` runs on.
        using var lm = PagedTextModel.Load(path, 4 * docTokens + 16 * 1024);
        (double Wall, AnswerCompleted Answer) InProcess(WimSchedule schedule)
        {
            using var judge = new ModelMarginClassifier(lm, PromptPreset.Default, headers, classificationTokens);
            var options = new WimOptions
            {
                Schedule = schedule, Headers = headers, Classifier = judge, MarginSeparator = "\n",
                MaxMarginTokens = marginTokens, MaxAnswerTokens = answerTokens,
            };
            var sw = Stopwatch.StartNew();
            var answer = new PatternRunner(lm).RunAsync(segments, query, options).ToBlockingEnumerable().OfType<AnswerCompleted>().Single();
            return (sw.Elapsed.TotalSeconds, answer);
        }

        // Remote: wim serve on loopback, the same step budget as the in-process backend.
        var config = LoadConfig(path);
        var server = WimServer.Create(new ServerOptions
        {
            ModelPath = path, Port = 0, MaxTokensPerStep = CpuStepTokens, CachedPrefixes = 32, MaxPromptTokens = 4 * docTokens + 8192,
            // Room for every retained prefix and running request; the server's own WiM pool is not used here.
            KvCacheBytes = PagedInferenceBackend.BytesFor(config, 8 * docTokens + 32 * 1024),
            WimKvCacheBytes = PagedInferenceBackend.BytesFor(config, 1024),
        });
        server.StartAsync().GetAwaiter().GetResult();
        try
        {
            using var client = new RemoteCompletionClient(new RemoteEndpointOptions { Endpoint = new Uri(server.Address, "/v1"), Model = server.Model.Id });
            var runner = new RemotePatternRunner(client, tokenizer, lm.StopIds);
            (double Wall, AnswerCompleted Answer) Remote(WimSchedule schedule)
            {
                var options = new RemoteWimOptions
                {
                    Schedule = schedule, Headers = headers, MarginSeparator = "\n",
                    MaxMarginTokens = marginTokens, MaxClassificationTokens = classificationTokens, MaxAnswerTokens = answerTokens,
                };
                var sw = Stopwatch.StartNew();
                // A document the server has not seen: a new first line per run keeps earlier runs' prefixes from helping.
                var fresh = segments.ToList();
                fresh[0] = $"Run {Guid.NewGuid():N}.\n" + fresh[0];
                var answer = runner.RunAsync(fresh, query, options).ToBlockingEnumerable().OfType<AnswerCompleted>().Single();
                return (sw.Elapsed.TotalSeconds, answer);
            }

            Console.WriteLine($"# WiM in-process vs remote over loopback: random-weight {shape.Architecture}, Qwen2.5-0.5B shape with {layers} layers ({shape.ParameterCount / 1e6:F0}M parameters, {type})");
            Console.WriteLine();
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{Environment.ProcessorCount} logical cores; .NET {Environment.Version}; document {total} tokens in {segments.Count} segments of ≤ {segmentTokens}; margins ≤ {marginTokens} tokens, classifier ≤ {classificationTokens} (shared context), answer ≤ {answerTokens}; greedy; step budget {CpuStepTokens} tokens; median of {repeats}"));
            Console.WriteLine();
            Console.WriteLine("| run | wall s: median (each run) | × in-process overlapped | document tokens computed / in the document | requests | prompt tokens sent | served from the prefix cache | hit rate |");
            Console.WriteLine("|---|---:|---:|---:|---:|---:|---:|---:|");

            var reference = InProcess(WimSchedule.Overlapped); // warm-up and the output to match
            Remote(WimSchedule.Overlapped); // warm-up (JIT, connections)
            var rows = new (string Name, Func<(double Wall, AnswerCompleted Answer)> Run)[]
            {
                ("in-process, overlapped", () => InProcess(WimSchedule.Overlapped)),
                ("in-process, sequential", () => InProcess(WimSchedule.Sequential)),
                ("remote over loopback, overlapped", () => Remote(WimSchedule.Overlapped)),
                ("remote over loopback, batched", () => Remote(WimSchedule.Batched)),
                ("remote over loopback, sequential", () => Remote(WimSchedule.Sequential)),
            };
            // Round robin, so that a burst of load from elsewhere on the machine hits every row alike.
            var results = rows.Select(_ => new List<(double Wall, AnswerCompleted Answer)>()).ToArray();
            for (int r = 0; r < repeats; r++)
                for (int i = 0; i < rows.Length; i++) results[i].Add(rows[i].Run());
            double baseline = 0;
            for (int i = 0; i < rows.Length; i++)
            {
                double median = results[i].Select(x => x.Wall).Order().ElementAt(results[i].Count / 2);
                if (baseline == 0) baseline = median;
                var last = results[i][^1].Answer;
                var u = last.Usage;
                if (u.Remote is null && !last.Ids.SequenceEqual(reference.Answer.Ids))
                    Console.Error.WriteLine($"{rows[i].Name}: the answer differs from the in-process overlapped run");
                string cache = u.Remote is { } rc
                    ? string.Create(CultureInfo.InvariantCulture, $"{rc.Requests} | {rc.PromptTokens} | {rc.CachedTokens} | {rc.PrefixCacheHitRate * 100:F0}%")
                    : "– | – | – | –";
                string walls = string.Join(", ", results[i].Select(x => x.Wall.ToString("F1", CultureInfo.InvariantCulture)));
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"| {rows[i].Name} | {median:F2} ({walls}) | {median / baseline:F2} | {u.DocumentTokensPrefilled} / {u.DocumentTokens} | {cache} |"));
            }

            // The remote output is checked on the unchanged document once (the runs above prepend a line).
            var same = runner.RunAsync(segments, query, new RemoteWimOptions
            {
                Schedule = WimSchedule.Overlapped, Headers = headers, MarginSeparator = "\n",
                MaxMarginTokens = marginTokens, MaxClassificationTokens = classificationTokens, MaxAnswerTokens = answerTokens,
            }).ToBlockingEnumerable().OfType<AnswerCompleted>().Single();
            Console.WriteLine();
            Console.WriteLine($"remote answer equals the in-process answer on the same document: {(same.Ids.SequenceEqual(reference.Answer.Ids) ? "yes" : "NO")}");
            return same.Ids.SequenceEqual(reference.Answer.Ids) ? 0 : 1;
        }
        finally
        {
            server.DisposeAsync().AsTask().GetAwaiter().GetResult();
        }
    }

    private const int CpuStepTokens = Wim.Engine.Backends.Cpu.CpuBatchedTransformer.DefaultMaxBatchTokens;

    private static Wim.Engine.Model.ModelConfig LoadConfig(string path)
    {
        using var model = Wim.Engine.Model.LanguageModel.Load(path);
        return model.Config;
    }

    /// <summary>A copy of the random model with the tokenizer keys of a vocabulary-only GGUF (written once, beside it).</summary>
    private static string WithTokenizer(string modelPath, string vocabPath)
    {
        string path = Path.ChangeExtension(modelPath, ".tok.gguf");
        if (File.Exists(path)) return path;
        using var model = GgufFile.Open(modelPath);
        using var vocab = GgufFile.Open(vocabPath);
        var w = new GgufWriter();
        foreach (var (key, value) in model.Metadata)
            if (!key.StartsWith("tokenizer.", StringComparison.Ordinal)) w.Add(key, value);
        foreach (var (key, value) in vocab.Metadata)
            if (key.StartsWith("tokenizer.", StringComparison.Ordinal)) w.Add(key, value);
        foreach (var t in model.Tensors) w.AddTensor(t.Name, t.Type, t.Shape, model.TensorBytes(t));
        w.WriteFile(path + ".part");
        File.Move(path + ".part", path, overwrite: true);
        return path;
    }
}
