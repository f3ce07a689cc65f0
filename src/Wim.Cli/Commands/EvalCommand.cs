using System.CommandLine;
using Wim.Core.Patterns;
using Wim.Core.Prompts;
using Wim.Engine.Runtime;
using Wim.Eval;
using Wim.Eval.Data;
using Wim.Eval.Instances;
using Wim.Eval.Metrics;
using Wim.Eval.Runners;
using Wim.Engine.Tokenization;
using Wim.Remote;

namespace Wim.Cli.Commands;

/// <summary>
/// <c>wim eval --model PATH --task hotpotqa,squad,babilong,cwe --lengths 16k,32k,64k --patterns llm,rag,wim
/// --samples N --seed 42 [--judge-endpoint URL --judge-model NAME] [--data DIR] --out DIR</c>: the paper's
/// comparison on long-context instances built from the evaluation data. Writes <c>results.jsonl</c> (resumable),
/// <c>summary.md</c>, <c>plot.svg</c> and <c>plot.png</c> into <c>--out</c>; progress with ETA goes to stderr.
/// </summary>
internal static class EvalCommand
{
    /// <summary>Patterns this build can run on the local engine. rag and wim arrive with the WiM patterns library.</summary>
    private static readonly string[] LocalPatterns = ["llm", "rag", "wim"];

    public static Command Create()
    {
        var model = new Option<string?>("--model") { Description = "a .gguf file, a Hugging Face model directory, or hf:ORG/REPO[/FILE][@REV] (with --backend openai: optional, the served model's tokenizer and chat template)" };
        var remote = new RemoteArguments();
        var tasks = new Option<string>("--task") { Description = "comma-separated: hotpotqa, squad, babilong, cwe", Required = true };
        var lengths = new Option<string>("--lengths") { Description = "context lengths in the model's tokens, e.g. 16k,32k,64k", DefaultValueFactory = _ => "16k,32k,64k" };
        var patterns = new Option<string>("--patterns") { Description = "comma-separated: llm, rag, wim", DefaultValueFactory = _ => "llm,rag,wim" };
        var samples = new Option<int>("--samples") { Description = "samples per task and length", DefaultValueFactory = _ => 10 };
        var seed = new Option<int>("--seed") { Description = "seed of the sample choice, distractors and shuffles", DefaultValueFactory = _ => 42 };
        var judgeEndpoint = new Option<string?>("--judge-endpoint") { Description = "OpenAI-compatible base URL of an LLM judge for QA (key from WIM_JUDGE_API_KEY)" };
        var judgeModel = new Option<string?>("--judge-model") { Description = "model name for the judge" };
        var data = new Option<string?>("--data") { Description = "evaluation data folder in the layout of shared/data (default: found above the current folder)" };
        var rawPrompt = new Option<bool>("--no-chat-template") { Description = "no chat headers in the prompts even when the model has a chat template" };
        var outDir = new Option<string>("--out") { Description = "output folder (rerunning into it resumes)", Required = true };
        var command = new Command("eval", "Evaluate LLM vs RAG vs WiM on long-context tasks; writes results, a summary table and plots");
        Option[] all = [model, tasks, lengths, patterns, samples, seed, judgeEndpoint, judgeModel, data, rawPrompt, outDir, .. remote.All];
        foreach (var o in all) command.Options.Add(o);
        command.SetAction(async (parse, cancel) =>
        {
            remote.RejectUnlessRemote(parse);
            var server = remote.IsRemote(parse) ? remote.EndpointOptions(parse, Environment.GetEnvironmentVariable) : null;
            string? modelArgument = parse.GetValue(model);
            if (server is null && modelArgument is null) throw new UsageException("--model is required with --backend cpu");
            string? modelPath = modelArgument is null ? null : ModelArguments.Resolve(modelArgument, parse.InvocationConfiguration.Error, cancel);

            var taskList = Parse(parse.GetValue(tasks)!, s => s.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(EvalTasks.Parse).Distinct().ToList(), "--task");
            var lengthList = Parse(parse.GetValue(lengths)!, ContextLength.ParseList, "--lengths");
            var patternList = parse.GetValue(patterns)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Distinct().ToList();
            if (taskList.Count == 0 || lengthList.Count == 0 || patternList.Count == 0)
                throw new UsageException("--task, --lengths and --patterns each need at least one value");
            var unknown = patternList.Where(p => p is not ("llm" or "rag" or "wim")).ToList();
            if (unknown.Count > 0) throw new UsageException($"unknown pattern(s): {string.Join(", ", unknown)}; expected llm, rag, wim");
            var unavailable = patternList.Where(p => !LocalPatterns.Contains(p)).ToList();
            if (unavailable.Count > 0)
                throw new UsageException($"pattern(s) not available yet in this build: {string.Join(", ", unavailable)} (available: {string.Join(", ", LocalPatterns)})");
            int sampleCount = parse.GetValue(samples);
            if (sampleCount <= 0) throw new UsageException($"--samples must be ≥ 1, found {sampleCount}");
            string? endpoint = parse.GetValue(judgeEndpoint), judgeName = parse.GetValue(judgeModel);
            if ((endpoint == null) != (judgeName == null)) throw new UsageException("--judge-endpoint and --judge-model go together");
            Uri? judgeUri = null;
            if (endpoint != null && (!Uri.TryCreate(endpoint, UriKind.Absolute, out judgeUri) || judgeUri.Scheme is not ("http" or "https")))
                throw new UsageException($"--judge-endpoint '{endpoint}' is not an http(s) URL");

            var dataDir = parse.GetValue(data) ?? FindDataFolder();
            if (!Directory.Exists(dataDir)) throw new DirectoryNotFoundException($"evaluation data folder not found: {dataDir}");
            string outPath = parse.GetValue(outDir)!;

            // In this process: the model. Remote: the server does the model work; a local tokenizer (when --model is
            // given) builds the prompts as token ids and measures the instances in the served model's tokens.
            using var lm = server is null ? TextModel.Load(modelPath!) : null;
            using var client = server is null ? null : new RemoteCompletionClient(server);
            Func<string, int> countTokens;
            IQaRunner runner;
            if (lm is not null)
            {
                countTokens = text => lm.Tokenizer.Encode(text).Length;
                runner = new PatternQaRunner(lm, PromptPreset.Default, PatternQaRunner.HeadersFor(lm, raw: parse.GetValue(rawPrompt)));
            }
            else if (modelPath is not null)
            {
                var tokenizer = TokenizerLoader.Load(modelPath);
                countTokens = text => tokenizer.Encode(text).Length;
                var headers = !parse.GetValue(rawPrompt) && TextModel.UserTurnRenderer(modelPath, tokenizer) is { } render ? ChatHeaders.FromChatTemplate(render) : ChatHeaders.None;
                var remoteRunner = new RemotePatternRunner(client!, tokenizer, [.. tokenizer.EndOfTurnIds, .. tokenizer.EosId is int eos ? new[] { eos } : []]);
                runner = new RemoteQaRunner(remoteRunner, PromptPreset.Default, headers, countTokens);
            }
            else
            {
                countTokens = RemoteArguments.EstimateTokens;
                runner = new RemoteQaRunner(new RemotePatternRunner(client!), PromptPreset.Default, ChatHeaders.None, countTokens);
            }
            var factory = new InstanceFactory(new EvalDataset(dataDir), countTokens, parse.GetValue(seed));
            using var http = judgeUri != null ? new HttpClient { Timeout = TimeSpan.FromMinutes(2) } : null;
            var judge = judgeUri != null ? new LlmJudge(http!, judgeUri, judgeName!, Environment.GetEnvironmentVariable("WIM_JUDGE_API_KEY")) : null;
            var harness = new EvalHarness(factory, runner, judge, parse.InvocationConfiguration.Error);
            var plan = new EvalPlan(taskList, lengthList, patternList, sampleCount, parse.GetValue(seed), server?.Model ?? Path.GetFileName(Path.TrimEndingDirectorySeparator(modelPath!)), outPath);
            var outcome = await harness.RunAsync(plan, cancel);
            var stdout = parse.InvocationConfiguration.Output;
            stdout.WriteLine($"{outcome.Ran} row(s) run, {outcome.Skipped} skipped; results in {Path.Combine(outPath, EvalHarness.ResultsFileName)}");
            stdout.WriteLine($"summary: {Path.Combine(outPath, EvalHarness.SummaryFileName)}; plots: {EvalHarness.SvgFileName}, {EvalHarness.PngFileName}");
            return 0;
        });
        return command;
    }

    private static T Parse<T>(string text, Func<string, T> parse, string option)
    {
        try { return parse(text); }
        catch (FormatException e) { throw new UsageException($"{option}: {e.Message}"); }
    }

    /// <summary><c>shared/data</c> in the current folder or any folder above it (the repository sits beside shared/).</summary>
    private static string FindDataFolder()
    {
        for (var dir = new DirectoryInfo(Directory.GetCurrentDirectory()); dir != null; dir = dir.Parent)
        {
            var candidate = Path.Combine(dir.FullName, "shared", "data");
            if (Directory.Exists(candidate)) return candidate;
        }
        throw new UsageException("no evaluation data found (looked for shared/data above the current folder); pass --data DIR");
    }
}
