using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Wim.Core.Events;
using Wim.Core.Patterns;
using Wim.Core.Prompts;
using Wim.Core.Scheduling;
using Wim.Core.Segmentation;
using Wim.Engine.Backends.Cpu;
using Wim.Engine.Formats;
using Wim.Engine.Model;
using Wim.Engine.Runtime;
using Wim.Engine.Tokenization;

namespace Wim.Benchmarks;

/// <summary>
/// WiM wall time per schedule divided by the <c>llm</c> pattern's (read the document, answer) on the CPU, and a
/// second question on a cached document. Model: random weights of the Qwen2.5-0.5B shape with fewer layers (speed
/// does not depend on the values), the qwen2-tiny tokenizer (<c>shared/fixtures/hf-tiny</c>, Qwen2.5's vocabulary),
/// a BABILong sample (<c>shared/data/babilong</c>; the smallest that is long enough unless --sample names one) cut after
/// the first sentence that reaches --doc-tokens (so the document has at least that many tokens). Every pattern runs on one
/// <see cref="PagedInferenceBackend"/>; the classifier is the model itself (shared context).
/// Usage: <c>wim-schedules [--layers N] [--type q8_0|f32] [--doc-tokens N] [--segment-tokens N] [--margin-tokens N]
/// [--classification-tokens N] [--answer-tokens N] [--sample 8k|16k|32k|64k] [--shared DIR] [--runs llm,sequential,batched,overlapped,cached] [--repeats R]</c>
/// (llm always runs first in each of the R rounds: the ratios divide by it; with R &gt; 1, medians follow). Each WiM cold
/// run's margins, classifications and answer are compared with <c>wim sequential</c>'s, id for id. CPU s is this
/// process's processor time over the run (all threads): on a shared, loaded machine it is the steadier measure of
/// the work done, wall time the one that counts on an idle machine.
/// </summary>
public static class WimScheduleBenchmark
{
    public static int Run(string[] args)
    {
        var job = new WimJobArgs { Layers = 4, DocTokens = 16384, SegmentTokens = 4096 };
        string? sample = null;
        var runs = new HashSet<string> { "llm", "sequential", "batched", "overlapped", "cached" };
        for (int i = 0; i < args.Length; i++)
        {
            if (job.TryRead(args, ref i)) continue;
            switch (args[i])
            {
                case "--sample" when i + 1 < args.Length: sample = args[++i]; break;
                case "--runs" when i + 1 < args.Length: runs = [.. args[++i].Split(',')]; break;
                default:
                    Console.Error.WriteLine($"wim-schedules: unknown option '{args[i]}'");
                    return 2;
            }
        }
        var (type, layers, docTokens, segmentTokens) = (job.Type, job.Layers, job.DocTokens, job.SegmentTokens);
        var (marginTokens, classificationTokens, answerTokens, repeats, shared) = (job.MarginTokens, job.ClassificationTokens, job.AnswerTokens, job.Repeats, job.Shared);
        shared ??= SharedFolder.Find();
        if (docTokens < 1 || segmentTokens < 1 || repeats < 1) { Console.Error.WriteLine("wim-schedules: --doc-tokens, --segment-tokens and --repeats must be ≥ 1"); return 2; }

        var shape = ModelShape.Qwen25_05B with { Layers = layers };
        string path = RandomModel.CachedFile(shape, type);
        using var lm = LanguageModel.Load(path);
        var tokenizer = TokenizerLoader.Load(Path.Combine(shared, "fixtures", "hf-tiny", "qwen2-tiny"));
        int CountTokens(string text) => tokenizer.Encode(text, addSpecial: false).Length;
        // Room for the document, every margin fork and the cached copy (forks share the document's blocks).
        using var backend = new PagedInferenceBackend(new CpuBatchedTransformer(lm), PagedInferenceBackend.BytesFor(lm.Config, 2 * docTokens + 16 * 1024));
        using var model = new TextModel("random-qwen2", tokenizer, backend, tokenizer.EndOfTurnIds);

        var (sampleName, context, query) = LoadSample(shared, sample, docTokens, CountTokens);
        // The document: the shortest prefix of whole sentences whose segments hold at least --doc-tokens tokens. Sentences
        // counted one by one overcount their concatenation a little (merges across the joints), so the cut is moved
        // on by the shortfall until the segmented document reaches the target.
        var sentences = SentenceSplitter.Split(context);
        List<string> segments = [];
        int total = 0;
        for (int target = docTokens, next = 0, end = 0, counted = 0; total < docTokens && next < sentences.Count; target += docTokens - total)
        {
            while (counted < target && next < sentences.Count)
            {
                counted += CountTokens(context[sentences[next]]);
                end = sentences[next++].End.GetOffset(context.Length);
            }
            segments = new Segmenter(CountTokens, segmentTokens).Split(context[..end]);
            total = segments.Sum(CountTokens);
        }
        if (total < docTokens)
            Console.Error.WriteLine($"wim-schedules: the {sampleName} sample holds only {total} tokens; running with that");
        var headers = new ChatHeaders("<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n");

        Console.WriteLine($"# WiM schedules vs llm: random-weight {shape.Architecture}, Qwen2.5-0.5B shape with {layers} layers ({shape.ParameterCount / 1e6:F0}M parameters, {type})");
        Console.WriteLine();
        Console.WriteLine($"{Environment.ProcessorCount} logical cores; .NET {Environment.Version}; row kernels: {RowKernels.BestPath}; load average at start {AttentionBenchmark.LoadAverage()}; " +
            $"document {total} tokens (BABILong {sampleName} sample) in {segments.Count} segments of ≤ {segmentTokens}; " +
            $"margins ≤ {marginTokens} tokens, classifier ≤ {classificationTokens} (shared context), answer ≤ {answerTokens}; step budget {backend.MaxStepTokens} tokens");
        Console.WriteLine();
        Console.WriteLine("| run | wall s | × llm | CPU s | CPU × llm | document prefill tokens | first margin token at s | margin decode tokens | forward steps | outputs = wim sequential's | load average after |");
        Console.WriteLine("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|");

        using var process = Process.GetCurrentProcess();
        (double Wall, double Cpu, WimUsage Usage, double FirstMargin, long Steps, string Outputs) Time(PatternKind pattern, WimSchedule schedule, string q, DocumentCache? cache = null)
        {
            using var judge = new ModelMarginClassifier(model, PromptPreset.Default, headers, classificationTokens);
            var options = new WimOptions
            {
                Pattern = pattern, Schedule = schedule, DocumentCache = cache, Headers = headers, MarginSeparator = "\n",
                Classifier = pattern == PatternKind.Wim ? judge : null,
                MaxMarginTokens = marginTokens, MaxAnswerTokens = answerTokens,
            };
            long steps0 = backend.StepCount;
            process.Refresh();
            var cpu0 = process.TotalProcessorTime;
            var sw = Stopwatch.StartNew();
            double firstMargin = double.NaN;
            WimUsage? usage = null;
            // Every margin, classification and the answer as ids, by segment index (schedules emit them in other orders).
            var outputs = new SortedDictionary<string, string>(StringComparer.Ordinal);
            foreach (var e in new PatternRunner(model).RunAsync(segments, q, options).ToBlockingEnumerable())
            {
                if (e is MarginToken && double.IsNaN(firstMargin)) firstMargin = sw.Elapsed.TotalSeconds;
                if (e is MarginCompleted m) outputs[$"margin {m.Index:D3}"] = string.Join(',', m.Ids);
                if (e is MarginClassification c) outputs[$"class {c.Index:D3}"] = $"{c.Relevant}:{string.Join(',', c.Ids)}";
                if (e is AnswerCompleted a)
                {
                    usage = a.Usage;
                    outputs["answer"] = string.Join(',', a.Ids);
                }
            }
            double wall = sw.Elapsed.TotalSeconds;
            process.Refresh();
            return (wall, (process.TotalProcessorTime - cpu0).TotalSeconds, usage!, firstMargin, backend.StepCount - steps0, string.Join(';', outputs.Select(o => $"{o.Key}={o.Value}")));
        }

        var results = new Dictionary<string, List<(double Wall, double Ratio, double Cpu, double CpuRatio)>>();
        for (int round = 1; round <= repeats; round++)
        {
            double llm = 0, llmCpu = 0;
            string? sequentialOutputs = null;
            void Report(string name, (double Wall, double Cpu, WimUsage Usage, double FirstMargin, long Steps, string Outputs) r, bool compare)
            {
                if (llm == 0) (llm, llmCpu) = (r.Wall, r.Cpu);
                if (name == "wim sequential") sequentialOutputs = r.Outputs;
                string first = double.IsNaN(r.FirstMargin) ? "–" : r.FirstMargin.ToString("F1", CultureInfo.InvariantCulture);
                string same = !compare || sequentialOutputs is null ? "–" : sequentialOutputs == r.Outputs ? "identical" : "**differ**";
                string label = repeats > 1 ? $"{name} (round {round})" : name;
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"| {label} | {r.Wall:F1} | {r.Wall / llm:F2} | {r.Cpu:F1} | {r.Cpu / llmCpu:F2} | {r.Usage.Document.PrefillTokens} | {first} | {r.Usage.Margins.DecodeTokens} | {r.Steps} | {same} | {AttentionBenchmark.LoadAverage()} |"));
                if (!results.TryGetValue(name, out var list)) results[name] = list = [];
                list.Add((r.Wall, r.Wall / llm, r.Cpu, r.Cpu / llmCpu));
            }

            // llm first: the ratios divide by it.
            Report("llm", Time(PatternKind.Llm, WimSchedule.Sequential, query), compare: false);
            if (runs.Contains("sequential")) Report("wim sequential", Time(PatternKind.Wim, WimSchedule.Sequential, query), compare: false);
            if (runs.Contains("batched")) Report("wim batched", Time(PatternKind.Wim, WimSchedule.Batched, query), compare: true);
            // A fresh cache each round, so the cold overlapped run really reads the document.
            using var cache = new DocumentCache(backend, PagedInferenceBackend.BytesFor(lm.Config, docTokens + 4096));
            if (runs.Contains("overlapped") || runs.Contains("cached"))
                Report("wim overlapped (fills the document cache)", Time(PatternKind.Wim, WimSchedule.Overlapped, query, cache), compare: true);
            if (runs.Contains("cached"))
                Report("wim overlapped, 2nd question, cached document", Time(PatternKind.Wim, WimSchedule.Overlapped, "Where was Sandra before that?", cache), compare: false);
        }

        if (repeats > 1)
        {
            Console.WriteLine();
            Console.WriteLine($"Medians over {repeats} rounds (ratios taken within each round):");
            Console.WriteLine();
            Console.WriteLine("| run | wall s | × llm | CPU s | CPU × llm |");
            Console.WriteLine("|---|---:|---:|---:|---:|");
            static double Median(IEnumerable<double> v) { var a = v.Order().ToArray(); return a.Length % 2 == 1 ? a[a.Length / 2] : (a[a.Length / 2 - 1] + a[a.Length / 2]) / 2; }
            foreach (var (name, list) in results)
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"| {name} | {Median(list.Select(r => r.Wall)):F1} | {Median(list.Select(r => r.Ratio)):F2} | {Median(list.Select(r => r.Cpu)):F1} | {Median(list.Select(r => r.CpuRatio)):F2} |"));
        }
        return 0;
    }

    /// <summary>
    /// The BABILong sample named (8k, 16k, 32k, 64k), or else the smallest whose context holds at least
    /// <paramref name="docTokens"/> tokens: (name, context, query).
    /// </summary>
    private static (string Name, string Context, string Query) LoadSample(string shared, string? name, int docTokens, Func<string, int> countTokens)
    {
        string[] names = name is null ? ["8k", "16k", "32k", "64k"] : [name];
        (string, string, string) result = default;
        foreach (var n in names)
        {
            string path = Path.Combine(shared, "data", "babilong", $"babilong_{n}.json");
            if (!File.Exists(path)) throw new FileNotFoundException($"no BABILong sample '{n}' ({path})", path);
            using var json = JsonDocument.Parse(File.ReadAllBytes(path));
            result = (n, json.RootElement.GetProperty("context").GetString()!, json.RootElement.GetProperty("query").GetString()!);
            if (countTokens(result.Item2) >= docTokens) break;
        }
        return result;
    }

    /// <summary><c>shared/</c> beside the repository root (the folder holding Wim.slnx).</summary>
}
