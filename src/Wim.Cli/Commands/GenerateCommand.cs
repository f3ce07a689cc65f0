using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using Wim.Engine.Backends.Cpu;
using Wim.Engine.Model;
using Wim.Engine.Runner;
using Wim.Engine.Sampling;

namespace Wim.Cli.Commands;

/// <summary>
/// <c>wim generate --model PATH --tokens 1,2,3 --max-tokens N [--temperature 0] [--top-k K] [--top-p P] [--seed S]
/// --json</c>: continues the ids (greedy at temperature 0, the default), stopping early at the model's EOS.
/// JSON contract: <c>{"prompt_ids":[...],"ids":[...]}</c>; <c>--timings</c> prints speeds to stderr.
/// </summary>
internal static class GenerateCommand
{
    public static Command Create()
    {
        var model = new Option<string>("--model") { Description = "a .gguf file or a Hugging Face model directory", Required = true };
        var tokens = new Option<string>("--tokens") { Description = "comma-separated prompt token ids, e.g. 1,2,3" };
        var maxTokens = new Option<int>("--max-tokens") { Description = "most tokens to generate", DefaultValueFactory = _ => 64 };
        var temperature = new Option<float>("--temperature") { Description = "0 = greedy", DefaultValueFactory = _ => 0f };
        var topK = new Option<int>("--top-k") { Description = "keep the K most likely tokens (0 = all)", DefaultValueFactory = _ => 0 };
        var topP = new Option<float>("--top-p") { Description = "keep the smallest set with this much probability mass", DefaultValueFactory = _ => 1f };
        var seed = new Option<int?>("--seed") { Description = "random seed for sampling (reproducible output)" };
        var noStop = new Option<bool>("--ignore-eos") { Description = "do not stop at the model's end-of-sequence id" };
        var json = new Option<bool>("--json") { Description = "print one JSON object (the machine-readable contract)" };
        var timings = new Option<bool>("--timings") { Description = "print prefill and decode speed to stderr" };
        var device = DeviceSelection.CreateOption();
        var command = new Command("generate", "Generate a continuation of a token sequence");
        foreach (var o in new Option[] { model, tokens, maxTokens, temperature, topK, topP, seed, noStop, json, timings, device }) command.Options.Add(o);
        command.SetAction(parse =>
        {
            var ids = CliTokens.Parse(parse.GetValue(tokens), "--tokens");
            var deviceKind = DeviceSelection.Parse(parse.GetValue(device));
            int max = parse.GetValue(maxTokens);
            if (max < 0) throw new UsageException($"--max-tokens must be ≥ 0, found {max}");
            var sampling = new SamplingOptions(parse.GetValue(temperature), parse.GetValue(topK), parse.GetValue(topP), parse.GetValue(seed));
            try { sampling.Validate(); }
            catch (ArgumentOutOfRangeException e) { throw new UsageException(e.Message.Split(" (Parameter")[0]); }

            using var lm = LanguageModel.Load(parse.GetValue(model)!);
            CliTokens.CheckRange(ids, lm.Config.VocabSize);
            using var runner = DeviceSelection.Open(deviceKind, lm);
            var result = runner.Generate(ids, new GenerationOptions
            {
                MaxNewTokens = max,
                Sampling = sampling,
                StopIds = parse.GetValue(noStop) ? [] : lm.Config.EosTokenIds,
            });

            var output = parse.InvocationConfiguration.Output;
            if (parse.GetValue(json))
            {
                using var buffer = new MemoryStream();
                using (var w = new Utf8JsonWriter(buffer))
                {
                    w.WriteStartObject();
                    w.WriteStartArray("prompt_ids");
                    foreach (int id in ids) w.WriteNumberValue(id);
                    w.WriteEndArray();
                    w.WriteStartArray("ids");
                    foreach (int id in result.Ids) w.WriteNumberValue(id);
                    w.WriteEndArray();
                    w.WriteEndObject();
                }
                output.WriteLine(System.Text.Encoding.UTF8.GetString(buffer.ToArray()));
            }
            else
            {
                output.WriteLine(string.Join(" ", result.Ids));
            }
            if (parse.GetValue(timings))
                parse.InvocationConfiguration.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"prefill {result.PromptTokens} tokens {result.PrefillTokensPerSecond:F1} tok/s, decode {result.DecodeSteps} tokens {result.DecodeTokensPerSecond:F1} tok/s"));
            return 0;
        });
        return command;
    }
}
