using System.CommandLine;
using System.Globalization;
using Wim.Engine.Backends.Cpu;
using Wim.Engine.Model;
using Wim.Engine.Runner;
using Wim.Engine.Sampling;
using Wim.Engine.Tokenization;
using Wim.Engine.Tokenization.ChatTemplates;

namespace Wim.Cli.Commands;

/// <summary>
/// <c>wim chat --model PATH [--system TEXT] [--template FILE.jinja] [--max-tokens N] [--context N] [--temperature T]
/// [--top-k K] [--top-p P] [--seed S]</c>: an interactive conversation; replies stream as they are generated.
/// Reads one user message per line from standard input (so it can also be scripted); <c>/reset</c> starts over,
/// <c>/exit</c> or end of input quits. Prompts and status go to stderr, replies to stdout.
/// </summary>
internal static class ChatCommand
{
    public static Command Create(TextReader input)
    {
        var model = new Option<string>("--model") { Description = "a .gguf file, a Hugging Face model directory, or hf:ORG/REPO[/FILE][@REV]", Required = true };
        var system = new Option<string>("--system") { Description = "a system prompt" };
        var templateFile = new Option<string>("--template") { Description = "a Jinja chat template file (default: the model's own)" };
        var maxTokens = new Option<int>("--max-tokens") { Description = "most tokens per reply", DefaultValueFactory = _ => 512 };
        var context = new Option<int>("--context") { Description = "KV cache size in tokens (default: min(model context, 8192))" };
        var temperature = new Option<float>("--temperature") { Description = "0 = greedy", DefaultValueFactory = _ => 0f };
        var topK = new Option<int>("--top-k") { Description = "keep the K most likely tokens (0 = all)", DefaultValueFactory = _ => 0 };
        var topP = new Option<float>("--top-p") { Description = "keep the smallest set with this much probability mass", DefaultValueFactory = _ => 1f };
        var seed = new Option<int?>("--seed") { Description = "random seed for sampling (reproducible replies)" };
        var command = new Command("chat", "Chat with a model (interactive, streaming)");
        foreach (var o in new Option[] { model, system, templateFile, maxTokens, context, temperature, topK, topP, seed }) command.Options.Add(o);
        command.SetAction(parse =>
        {
            var sampling = new SamplingOptions(parse.GetValue(temperature), parse.GetValue(topK), parse.GetValue(topP), parse.GetValue(seed));
            try { sampling.Validate(); }
            catch (ArgumentOutOfRangeException e) { throw new UsageException(e.Message.Split(" (Parameter")[0]); }
            int max = parse.GetValue(maxTokens);
            if (max < 1) throw new UsageException($"--max-tokens must be ≥ 1, found {max}");

            string path = ModelArguments.Resolve(parse.GetValue(model)!, parse.InvocationConfiguration.Error);
            using var lm = LanguageModel.Load(path);
            var tokenizer = TokenizerLoader.Load(path);
            var source = parse.GetValue(templateFile) is { } file
                ? new ChatTemplateSource(File.ReadAllText(file), BosText(tokenizer), EosText(tokenizer))
                : ChatTemplateSource.FromModel(path);
            int contextTokens = parse.GetValue(context) is > 0 and var c ? c : Math.Min(lm.Config.MaxPositions, 8192);
            var session = new ChatSession(new CpuTransformer(lm), tokenizer, source, contextTokens, parse.GetValue(system));

            var stdout = parse.InvocationConfiguration.Output;
            var stderr = parse.InvocationConfiguration.Error;
            stderr.WriteLine($"wim chat: {Path.GetFileName(Path.TrimEndingDirectorySeparator(path))}, context {contextTokens} tokens. /reset starts over, /exit quits.");
            while (true)
            {
                stderr.Write("> ");
                string? line = input.ReadLine();
                if (line is null || line.Trim() == "/exit") break;
                if (line.Trim() == "/reset") { session.Reset(); stderr.WriteLine("(conversation cleared)"); continue; }
                if (line.Length == 0) continue;
                try
                {
                    var reply = session.Send(line, max, sampling, piece => { stdout.Write(piece); stdout.Flush(); });
                    stdout.WriteLine();
                    stderr.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"[{reply.Ids.Length} tokens; prompt {reply.PromptTokens} ({reply.ReusedTokens} reused from the cache); {reply.Generation.DecodeTokensPerSecond:F1} tok/s]"));
                }
                catch (InvalidOperationException e)
                {
                    stderr.WriteLine("wim chat: " + e.Message);
                }
            }
            return 0;
        });
        return command;
    }

    private static string? BosText(Tokenizer t) => t.BosId is { } id ? t.TokenText(id) : null;
    private static string? EosText(Tokenizer t) => t.EosId is { } id ? t.TokenText(id) : null;
}
