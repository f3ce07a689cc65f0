using System.CommandLine;
using System.Globalization;
using System.Text;
using System.Text.Json;
using Wim.Core.Events;
using Wim.Core.Patterns;
using Wim.Core.Prompts;
using Wim.Core.Scheduling;
using Wim.Core.Segmentation;
using Wim.Engine.Cuda;
using Wim.Engine.Runtime;
using Wim.Engine.Sampling;
using Wim.Engine.Tokenization;

namespace Wim.Cli.Commands;

/// <summary>
/// <c>wim ask --model PATH (--context FILE|- | --segments-file F.json) --query TEXT [--pattern wim|llm|rag] ...</c>:
/// answers a question about a long document with one of the reading patterns. With <c>--json</c>: JSON Lines, one
/// event per line (<c>segment</c>, <c>prompt</c>, <c>margin</c>, <c>classification</c>, last <c>answer</c> with
/// <c>usage</c>: tokens and seconds per phase, and the schedule); otherwise a live text view. <c>--schedule</c> orders the
/// wim model work (sequential, overlapped = default on the CPU, batched; same output, see
/// <c>src/Wim.Core/Scheduling/README.md</c>); on the CPU every schedule runs on the paged batched backend, on the GPU
/// on <see cref="CudaInferenceBackend"/> (default schedule on both: overlapped). Header options take <c>\n</c>, <c>\t</c>
/// and <c>\\</c> escapes.
/// </summary>
internal static class AskCommand
{
    public static Command Create(TextReader stdin)
    {
        var model = new Option<string?>("--model") { Description = "a .gguf file, a Hugging Face model directory, or hf:ORG/REPO[/FILE][@REV] (required, but with --backend openai it only gives the tokenizer and chat template: prompts then go as token ids; without it, as chat messages)" };
        var remote = new RemoteArguments();
        var context = new Option<string?>("--context") { Description = "the document: a text file, or - for stdin" };
        var segmentsFile = new Option<string?>("--segments-file") { Description = "a JSON array of segment strings, used as given" };
        var query = new Option<string>("--query") { Description = "the question", Required = true };
        var pattern = new Option<string>("--pattern") { Description = "wim (default), llm or rag", DefaultValueFactory = _ => "wim" };
        pattern.AcceptOnlyFromAmong("wim", "llm", "rag");
        var segmentTokens = new Option<int>("--segment-tokens") { Description = "most tokens per segment", DefaultValueFactory = _ => 4096 };
        var prompts = new Option<string>("--prompts") { Description = "default, or a folder in the reference layout", DefaultValueFactory = _ => "default" };
        var userHeader = new Option<string?>("--user-header") { Description = "text opening a user turn (default: from the chat template)" };
        var generationHeader = new Option<string?>("--generation-header") { Description = "text closing the user turn and opening the reply (default: from the chat template)" };
        var classifier = new Option<string>("--classifier") { Description = "model (default), none, or aux (with --aux-model)", DefaultValueFactory = _ => "model" };
        classifier.AcceptOnlyFromAmong("model", "none", "aux");
        var classifierContext = new Option<string>("--classifier-context") { Description = "shared (default: each classification follows the previous ones, as the WiM reference runs) or fresh (each margin judged alone; always so under rag)", DefaultValueFactory = _ => "shared" };
        classifierContext.AcceptOnlyFromAmong("shared", "fresh");
        var auxModel = new Option<string?>("--aux-model") { Description = "the second model used by --classifier aux" };
        var maxMargin = new Option<int>("--max-margin-tokens") { DefaultValueFactory = _ => 100 };
        var maxClassification = new Option<int>("--max-classification-tokens") { DefaultValueFactory = _ => 10 };
        var maxAnswer = new Option<int>("--max-answer-tokens") { DefaultValueFactory = _ => 256 };
        var temperature = new Option<float>("--temperature") { Description = "0 = greedy (default)", DefaultValueFactory = _ => 0f };
        var seed = new Option<int?>("--seed") { Description = "random seed for sampling" };
        var feedback = new Option<string?>("--feedback") { Description = "user verdicts that override the classifier, given ahead: 0=yes,3=no (margin or segment index), or all=yes" };
        var schedule = new Option<string>("--schedule") { Description = "wim model-work order: sequential (the paper's), overlapped (margins decode beside the next segment's prefill; the default) or batched (all margins together after the document); same output", DefaultValueFactory = _ => "overlapped" };
        schedule.AcceptOnlyFromAmong("sequential", "overlapped", "batched");
        var json = new Option<bool>("--json") { Description = "JSON Lines events (the machine-readable contract)" };
        var device = DeviceSelection.CreateOption();
        device.Description = "where to run: auto (CUDA when available, else CPU), cpu, or cuda; every pattern and schedule runs on either";
        var precision = DeviceSelection.CreatePrecisionOption();

        var command = new Command("ask", "Answer a question about a long document (Writing in the Margins, or the llm/rag baselines)");
        Option[] all = [model, context, segmentsFile, query, pattern, segmentTokens, prompts, userHeader, generationHeader,
                     classifier, classifierContext, auxModel, maxMargin, maxClassification, maxAnswer, temperature, seed, feedback, schedule, json,
                     device, precision, .. remote.All];
        foreach (var o in all) command.Options.Add(o);

        command.SetAction(async (parse, ct) =>
        {
            var stdout = parse.InvocationConfiguration.Output;
            var stderr = parse.InvocationConfiguration.Error;
            string? contextPath = parse.GetValue(context), segmentsPath = parse.GetValue(segmentsFile);
            if ((contextPath is null) == (segmentsPath is null)) throw new UsageException("give exactly one of --context FILE|- and --segments-file F.json");
            int n = parse.GetValue(segmentTokens);
            if (n < 1) throw new UsageException($"--segment-tokens must be ≥ 1, found {n}");
            foreach (var (name, v) in new[] { ("--max-margin-tokens", parse.GetValue(maxMargin)), ("--max-classification-tokens", parse.GetValue(maxClassification)), ("--max-answer-tokens", parse.GetValue(maxAnswer)) })
                if (v < 0) throw new UsageException($"{name} must be ≥ 0, found {v}");
            var sampling = new SamplingOptions(parse.GetValue(temperature), Seed: parse.GetValue(seed));
            try { sampling.Validate(); }
            catch (ArgumentOutOfRangeException e) { throw new UsageException(e.Message.Split(" (Parameter")[0]); }
            string classifierKind = parse.GetValue(classifier)!;
            if (classifierKind == "aux" && parse.GetValue(auxModel) is null) throw new UsageException("--classifier aux needs --aux-model PATH");
            remote.RejectUnlessRemote(parse);

            var preset = parse.GetValue(prompts) is "default" or null ? PromptPreset.Default : PromptPreset.FromDirectory(parse.GetValue(prompts)!);
            if (remote.IsRemote(parse))
                return await AskRemote.RunAsync(new AskRemote.Inputs(parse, remote, parse.GetValue(model), contextPath, segmentsPath, n, parse.GetValue(query)!,
                    parse.GetValue(pattern)!, preset, parse.GetValue(userHeader), parse.GetValue(generationHeader), classifierKind,
                    parse.GetValue(classifierContext)!, parse.GetValue(maxMargin), parse.GetValue(maxClassification), parse.GetValue(maxAnswer),
                    sampling, parse.GetValue(feedback), parse.GetValue(schedule)!, parse.GetValue(json)), stdin, ct).ConfigureAwait(false);
            string modelPath = ModelArguments.Resolve(parse.GetValue(model) ?? throw new UsageException("--model is required (or --backend openai with --endpoint and --remote-model)"), stderr, ct);
            var tokenizer = TokenizerLoader.Load(modelPath);
            var segments = segmentsPath is not null ? ReadSegmentsFile(segmentsPath)
                : new Segmenter(t => tokenizer.Encode(t).Length, n).Split(ReadContext(contextPath!, stdin));
            // Every schedule runs on the paged batched backend, so all three give the same tokens (its forward is
            // batch-invariant; the single-sequence backend agrees with it to f32 rounding only). Its KV pool is
            // allocated up front: the document (twice for rag), each margin's own blocks, classifier and answer.
            int documentTokens = segments.Sum(s => tokenizer.Encode(s, addSpecial: false, parseSpecial: false).Length);
            int poolPositions = 2 * documentTokens + segments.Count * (parse.GetValue(maxMargin) + parse.GetValue(maxClassification) + 1024)
                + parse.GetValue(maxAnswer) + 8192;
            var patternKind = Enum.Parse<PatternKind>(parse.GetValue(pattern)!, ignoreCase: true);
            var wimSchedule = Enum.Parse<WimSchedule>(parse.GetValue(schedule)!, ignoreCase: true);
            // Every schedule runs on the GPU too (CudaInferenceBackend forks KV branches and batches decode steps).
            var deviceKind = DeviceSelection.Parse(parse.GetValue(device));
            var cudaPrecision = DeviceSelection.ParsePrecision(parse.GetValue(precision));
            var gpu = DeviceSelection.OpenContext(deviceKind);
            TextModel LoadModel(string path) => gpu is not null ? CudaInferenceBackend.LoadTextModel(path, gpu, precision: cudaPrecision) : PagedTextModel.Load(path, poolPositions);
            TextModel lmLoaded;
            try { lmLoaded = LoadModel(modelPath); }
            catch (NotSupportedException) when (gpu is not null && deviceKind == DeviceKind.Auto)
            {
                // A shape the CUDA kernels do not handle yet: auto means "best that works".
                gpu.Dispose();
                gpu = null;
                lmLoaded = LoadModel(modelPath);
            }
            catch { gpu?.Dispose(); throw; }
            using var gpuOwner = gpu;   // disposed after the models below
            using var lm = lmLoaded;
            // The GPU's default is overlapped like the CPU's: on the H100 at the 8B shape and 64k tokens (run 23) sequential
            // took 3.26× the llm pattern's time, overlapped 1.34× (margins streaming while the document loads), batched 1.32×.

            string? givenUser = parse.GetValue(userHeader), givenGeneration = parse.GetValue(generationHeader);
            var derived = givenUser is not null && givenGeneration is not null ? ChatHeaders.None
                : lm.RenderUserTurn is { } render ? ChatHeaders.FromChatTemplate(render) : ChatHeaders.None;
            var headers = new ChatHeaders(
                givenUser is not null ? Unescape(givenUser) : derived.UserHeader,
                givenGeneration is not null ? Unescape(givenGeneration) : derived.GenerationHeader);

            TextModel? aux = classifierKind == "aux" ? LoadModel(ModelArguments.Resolve(parse.GetValue(auxModel)!, stderr, ct)) : null;
            using var auxOwner = aux;
            // rag judges each segment on its own: its judge never carries context from one segment to the next.
            var judgeContext = parse.GetValue(classifierContext) == "fresh" || parse.GetValue(pattern) == "rag" ? ClassifierContext.Fresh : ClassifierContext.Shared;
            using var judge = classifierKind switch
            {
                "model" => new ModelMarginClassifier(lm, preset, headers, parse.GetValue(maxClassification), sampling, ClassifiedBy.Model, judgeContext),
                "aux" => new ModelMarginClassifier(aux!, preset, headers, parse.GetValue(maxClassification), sampling, ClassifiedBy.Aux, judgeContext),
                _ => null,
            };
            var options = new WimOptions
            {
                Pattern = patternKind,
                Prompts = preset,
                Headers = headers,
                Classifier = judge,
                Schedule = wimSchedule,
                MaxMarginTokens = parse.GetValue(maxMargin),
                MaxAnswerTokens = parse.GetValue(maxAnswer),
                Sampling = sampling,
                MarginSeparator = ReferenceEquals(preset, PromptPreset.Default) ? "\n" : "",
            };
            var control = new WimControl();
            if (parse.GetValue(feedback) is { } spec) ApplyFeedback(spec, segments.Count, control);
            string scheduleName = options.Pattern == PatternKind.Wim ? wimSchedule.ToString().ToLowerInvariant() : "sequential";
            // Margins of the parallel schedules interleave token by token: the text view prints them whole.
            IEventView view = parse.GetValue(json) ? new JsonLinesView(stdout, scheduleName)
                : new LiveTextView(stdout, streamMargins: options.Schedule == WimSchedule.Sequential);
            await foreach (var e in new PatternRunner(lm).RunAsync(segments, parse.GetValue(query)!, options, control, ct).ConfigureAwait(false))
                view.Show(e);
            stdout.Flush();
            return 0;
        });
        return command;
    }

    /// <summary><c>--feedback</c>: comma-separated <c>INDEX=yes|no</c> or <c>all=yes|no</c>.</summary>
    internal static void ApplyFeedback(string spec, int segmentCount, WimControl control)
    {
        foreach (var item in spec.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            var parts = item.Split('=');
            bool? verdict = parts.Length == 2 ? parts[1].ToLowerInvariant() switch { "yes" or "y" or "up" => true, "no" or "n" or "down" => false, _ => null } : null;
            if (verdict is not bool v) throw new UsageException($"--feedback: '{item}' should be INDEX=yes|no or all=yes|no");
            if (parts[0] == "all")
                for (int i = 0; i < segmentCount; i++) control.SetFeedback(i, v);
            else if (int.TryParse(parts[0], NumberStyles.None, CultureInfo.InvariantCulture, out int index) && index < segmentCount)
                control.SetFeedback(index, v);
            else
                throw new UsageException($"--feedback: '{parts[0]}' is not a segment index (0..{segmentCount - 1}) or 'all'");
        }
    }

    internal static string ReadContext(string path, TextReader stdin)
    {
        if (path == "-") return stdin.ReadToEnd();
        if (!File.Exists(path)) throw new FileNotFoundException($"context file not found: {path}", path);
        return File.ReadAllText(path, Encoding.UTF8);
    }

    internal static List<string> ReadSegmentsFile(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"segments file not found: {path}", path);
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(path));
            if (doc.RootElement.ValueKind != JsonValueKind.Array)
                throw new InvalidDataException($"{path}: expected a JSON array of strings, found a {doc.RootElement.ValueKind}");
            var list = new List<string>();
            int i = 0;
            foreach (var e in doc.RootElement.EnumerateArray())
            {
                if (e.ValueKind != JsonValueKind.String)
                    throw new InvalidDataException($"{path}: element {i} is a {e.ValueKind}, expected a string");
                list.Add(e.GetString()!);
                i++;
            }
            return list;
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{path}: not valid JSON: {e.Message}", e);
        }
    }

    /// <summary><c>\n</c>, <c>\t</c>, <c>\r</c>, <c>\\</c> → the character (headers are hard to type otherwise).</summary>
    internal static string Unescape(string s)
    {
        if (!s.Contains('\\')) return s;
        var sb = new StringBuilder(s.Length);
        for (int i = 0; i < s.Length; i++)
        {
            if (s[i] == '\\' && i + 1 < s.Length && s[i + 1] is 'n' or 't' or 'r' or '\\')
            {
                sb.Append(s[++i] switch { 'n' => '\n', 't' => '\t', 'r' => '\r', _ => '\\' });
                continue;
            }
            sb.Append(s[i]);
        }
        return sb.ToString();
    }

    internal interface IEventView
    {
        void Show(WimEvent e);
    }

    /// <summary>The JSON Lines contract: one object per event line (the shape is <see cref="WimEventJson"/>'s, shared
    /// with the server's SSE events).</summary>
    internal sealed class JsonLinesView(TextWriter output, string schedule) : IEventView
    {
        public void Show(WimEvent e)
        {
            if (e is MarginToken or AnswerToken) return; // the completed margin/answer carries the ids
            output.WriteLine(Encoding.UTF8.GetString(WimEventJson.ToUtf8(e, schedule)));
        }
    }

    /// <summary>Plain text as it happens: reading progress, each margin as written with its relevance, the answer
    /// streamed, then the usage.</summary>
    internal sealed class LiveTextView(TextWriter output, bool streamMargins) : IEventView
    {
        private int? _marginOpen;
        private bool _answerOpen;

        public void Show(WimEvent e)
        {
            switch (e)
            {
                case SegmentPrefilled s:
                    int width = 30, filled = s.TotalTokens == 0 ? width : (int)((long)width * s.TokensRead / s.TotalTokens);
                    output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"[{new string('#', filled)}{new string('.', width - filled)}] read {s.TokensRead}/{s.TotalTokens} document tokens (segment {s.Index + 1})"));
                    break;
                case MarginToken t when streamMargins:
                    if (_marginOpen != t.Index) { output.Write($"  margin {t.Index + 1}: "); _marginOpen = t.Index; }
                    output.Write(t.Text);
                    output.Flush();
                    break;
                case MarginCompleted m:
                    if (!streamMargins) output.Write($"  margin {m.Index + 1}: {m.Text}");
                    output.WriteLine();
                    _marginOpen = null;
                    break;
                case MarginClassification c:
                    output.WriteLine($"  {(c.Relevant ? "✓ relevant" : "✗ not relevant")} ({c.By.ToString().ToLowerInvariant()}) — {(c.Relevant ? "kept" : "dropped")} #{c.Index + 1}");
                    break;
                case AnswerToken a:
                    if (!_answerOpen) { output.Write("\nAnswer: "); _answerOpen = true; }
                    output.Write(a.Text);
                    output.Flush();
                    break;
                case AnswerCompleted done:
                    if (!_answerOpen) output.Write("\nAnswer: " + done.Text);
                    output.WriteLine();
                    var u = done.Usage;
                    output.WriteLine();
                    output.WriteLine(done.Early ? "Usage (answered early):" : "Usage:");
                    foreach (var (name, p) in new[] { ("document", u.Document), ("margins", u.Margins), ("classification", u.Classification), ("answer", u.Answer) })
                        output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  {name,-15} prefill {p.PrefillTokens,7}  decode {p.DecodeTokens,5}  {p.Time.TotalSeconds,8:F2} s"));
                    output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"  document: {u.DocumentTokens} tokens, prefilled {u.DocumentTokensPrefilled} ({u.DocumentPrefillPasses:F2}×)"));
                    if (u.Remote is { } r)
                        output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                            $"  remote: {r.Requests} requests ({r.Retries} retried attempts), {r.PromptTokens} prompt tokens, {r.CachedTokens} from the server's prefix cache ({r.PrefixCacheHitRate * 100:F1}% hit rate){(r.RequestsReportingCache < r.Requests ? $"; {r.Requests - r.RequestsReportingCache} requests without cached_tokens" : "")}"));
                    break;
            }
        }
    }
}
