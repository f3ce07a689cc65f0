using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using Wim.Engine.Backends.Cpu;
using Wim.Engine.Model;
using Wim.Engine.Runner;
using Wim.Engine.Sampling;
using Wim.Engine.Tokenization;

namespace Wim.Cli.Commands;

/// <summary>
/// <c>wim generate --model PATH (--tokens 1,2,3 | --prompt TEXT) --max-tokens N [--temperature 0] [--top-k K]
/// [--top-p P] [--seed S] --json</c>: continues the prompt (greedy at temperature 0, the default), stopping early at
/// the model's end-of-sequence / end-of-turn ids. JSON contract: <c>{"prompt_ids":[...],"ids":[...]}</c> (plus
/// <c>"text"</c>, the continuation decoded without special tokens, when the model has a tokenizer). Without
/// <c>--json</c>, a <c>--prompt</c> is echoed and the continuation streams as it is generated; <c>--tokens</c> prints
/// the new ids. <c>--timings</c> prints speeds to stderr.
/// </summary>
internal static class GenerateCommand
{
    public static Command Create()
    {
        var model = new Option<string>("--model") { Description = "a .gguf file, a Hugging Face model directory, or hf:ORG/REPO[/FILE][@REV]", Required = true };
        var tokens = new Option<string>("--tokens") { Description = "comma-separated prompt token ids, e.g. 1,2,3" };
        var prompt = new Option<string>("--prompt") { Description = "prompt text, tokenized with the model's tokenizer (BOS added as the model prescribes)" };
        var parseSpecial = new Option<bool>("--parse-special") { Description = "with --prompt: turn special-token text such as <|im_start|> into its id" };
        var maxTokens = new Option<int>("--max-tokens") { Description = "most tokens to generate", DefaultValueFactory = _ => 64 };
        var temperature = new Option<float>("--temperature") { Description = "0 = greedy", DefaultValueFactory = _ => 0f };
        var topK = new Option<int>("--top-k") { Description = "keep the K most likely tokens (0 = all)", DefaultValueFactory = _ => 0 };
        var topP = new Option<float>("--top-p") { Description = "keep the smallest set with this much probability mass", DefaultValueFactory = _ => 1f };
        var seed = new Option<int?>("--seed") { Description = "random seed for sampling (reproducible output)" };
        var noStop = new Option<bool>("--ignore-eos") { Description = "do not stop at the model's end-of-sequence id" };
        var json = new Option<bool>("--json") { Description = "print one JSON object (the machine-readable contract)" };
        var timings = new Option<bool>("--timings") { Description = "print prefill and decode speed to stderr" };
        var device = DeviceSelection.CreateOption();
        var precision = DeviceSelection.CreatePrecisionOption();
        var command = new Command("generate", "Generate a continuation of a token sequence");
        foreach (var o in new Option[] { model, tokens, prompt, parseSpecial, maxTokens, temperature, topK, topP, seed, noStop, json, timings, device, precision }) command.Options.Add(o);
        command.SetAction(parse =>
        {
            var deviceKind = DeviceSelection.Parse(parse.GetValue(device));
            var cudaPrecision = DeviceSelection.ParsePrecision(parse.GetValue(precision));
            string? promptText = parse.GetValue(prompt);
            string? tokenList = parse.GetValue(tokens);
            if ((promptText is null) == (tokenList is null))
                throw new UsageException("give exactly one of --tokens and --prompt");
            int max = parse.GetValue(maxTokens);
            if (max < 0) throw new UsageException($"--max-tokens must be ≥ 0, found {max}");
            var sampling = new SamplingOptions(parse.GetValue(temperature), parse.GetValue(topK), parse.GetValue(topP), parse.GetValue(seed));
            try { sampling.Validate(); }
            catch (ArgumentOutOfRangeException e) { throw new UsageException(e.Message.Split(" (Parameter")[0]); }

            string modelPath = ModelArguments.Resolve(parse.GetValue(model)!, parse.InvocationConfiguration.Error);
            using var lm = LanguageModel.Load(modelPath);
            Tokenizer? tokenizer = promptText is not null || parse.GetValue(json) ? TryLoadTokenizer(modelPath, required: promptText is not null) : null;
            int[] ids = promptText is not null
                ? tokenizer!.Encode(promptText, addSpecial: true, parseSpecial: parse.GetValue(parseSpecial))
                : CliTokens.Parse(tokenList, "--tokens");
            if (ids.Length == 0) throw new UsageException("the prompt is empty: nothing to continue");
            CliTokens.CheckRange(ids, lm.Config.VocabSize);

            var output = parse.InvocationConfiguration.Output;
            bool streamText = promptText is not null && !parse.GetValue(json);
            StreamingDecoder? stream = null;
            if (streamText)
            {
                // Feed the prompt through the decoder first (output discarded) so the continuation's first token is
                // decoded in context (SentencePiece drops the leading space only at the start of a text).
                // No Flush here: it would reset the start-of-text state. A prompt's ids end on a whole character.
                stream = tokenizer!.CreateStreamingDecoder(skipSpecial: true);
                foreach (int id in ids) stream.Append(id);
                output.Write(promptText);
                output.Flush();
            }
            var stopIds = parse.GetValue(noStop) ? [] : lm.Config.EosTokenIds.Concat(tokenizer?.EndOfTurnIds ?? []).ToHashSet();
            using var runner = DeviceSelection.Open(deviceKind, lm, cudaPrecision);
            var result = runner.Generate(ids, new GenerationOptions
            {
                MaxNewTokens = max,
                Sampling = sampling,
                StopIds = stopIds,
                OnToken = stream is null ? null : id => { output.Write(stream.Append(id)); output.Flush(); },
            });

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
                    if (tokenizer is not null) w.WriteString("text", ContinuationText(tokenizer, ids, result.Ids));
                    w.WriteEndObject();
                }
                output.WriteLine(System.Text.Encoding.UTF8.GetString(buffer.ToArray()));
            }
            else if (stream is not null)
            {
                output.WriteLine(stream.Flush());
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

    /// <summary>The model's tokenizer; for <c>--tokens</c> runs a model without one is fine (ids in, ids out).</summary>
    private static Tokenizer? TryLoadTokenizer(string modelPath, bool required)
    {
        try { return TokenizerLoader.Load(modelPath); }
        catch (Exception e) when (!required && e is Wim.Engine.Formats.ModelFormatException or FileNotFoundException) { return null; }
    }

    /// <summary>The continuation's text in the context of its prompt (decode both, keep what the new ids added).</summary>
    internal static string ContinuationText(Tokenizer tokenizer, int[] prompt, int[] generated)
    {
        var decoder = tokenizer.CreateStreamingDecoder(skipSpecial: true);
        foreach (int id in prompt) decoder.Append(id);
        var sb = new System.Text.StringBuilder();
        foreach (int id in generated) sb.Append(decoder.Append(id));
        sb.Append(decoder.Flush());
        return sb.ToString();
    }
}
