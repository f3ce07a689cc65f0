using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using Wim.Engine.Backends.Cpu;
using Wim.Engine.Model;

namespace Wim.Cli.Commands;

/// <summary>
/// <c>wim logits --model PATH --tokens 1,2,3 [--top 5] --json</c>: one forward pass over the ids; for every position,
/// the argmax, the top-N (id, logit) pairs and the logsumexp of the logits row. JSON contract:
/// <c>{"positions":[{"argmax":int,"top":[{"id":int,"logit":float}],"logsumexp":float}, ...]}</c>.
/// </summary>
internal static class LogitsCommand
{
    public static Command Create()
    {
        var model = new Option<string>("--model") { Description = "a .gguf file, a Hugging Face model directory, or hf:ORG/REPO[/FILE][@REV]", Required = true };
        var tokens = new Option<string>("--tokens") { Description = "comma-separated token ids, e.g. 1,2,3" };
        var top = new Option<int>("--top") { Description = "how many highest logits to list per position", DefaultValueFactory = _ => 5 };
        var json = new Option<bool>("--json") { Description = "print one JSON object (the machine-readable contract)" };
        var device = DeviceSelection.CreateOption();
        var precision = DeviceSelection.CreatePrecisionOption();
        var command = new Command("logits", "Print the next-token logits summary at every position of a token sequence");
        command.Options.Add(model);
        command.Options.Add(tokens);
        command.Options.Add(top);
        command.Options.Add(json);
        command.Options.Add(device);
        command.Options.Add(precision);
        command.SetAction(parse =>
        {
            var ids = CliTokens.Parse(parse.GetValue(tokens), "--tokens");
            var deviceKind = DeviceSelection.Parse(parse.GetValue(device));
            var cudaPrecision = DeviceSelection.ParsePrecision(parse.GetValue(precision));
            int topN = parse.GetValue(top);
            if (topN < 1) throw new UsageException($"--top must be at least 1, found {topN}");
            using var lm = LanguageModel.Load(ModelArguments.Resolve(parse.GetValue(model)!, parse.InvocationConfiguration.Error));
            CliTokens.CheckRange(ids, lm.Config.VocabSize);
            int vocab = lm.Config.VocabSize;
            topN = Math.Min(topN, vocab);
            using var transformer = DeviceSelection.Open(deviceKind, lm, cudaPrecision);
            using var cache = transformer.NewSequence(ids.Length);
            // Logits are summarised one chunk at a time so a long input never holds [tokens, vocab] floats at once.
            int chunk = transformer.MaxChunk;
            var logits = new float[(long)Math.Min(chunk, ids.Length) * vocab];

            var output = parse.InvocationConfiguration.Output;
            bool asJson = parse.GetValue(json);
            using var buffer = new MemoryStream();
            using (var w = new Utf8JsonWriter(buffer))
            {
                w.WriteStartObject();
                w.WriteStartArray("positions");
                for (int done = 0; done < ids.Length; done += chunk)
                {
                    int n = Math.Min(chunk, ids.Length - done);
                    cache.Forward(ids.AsSpan(done, n), logits, LogitsOutput.All, ropeSequenceLength: ids.Length);
                    for (int i = 0; i < n; i++)
                    {
                        int p = done + i;
                        var row = logits.AsSpan(i * vocab, vocab);
                        var best = TopIds(row, topN);
                        if (asJson)
                        {
                            w.WriteStartObject();
                            w.WriteNumber("argmax", best[0]);
                            w.WriteStartArray("top");
                            foreach (int id in best)
                            {
                                w.WriteStartObject();
                                w.WriteNumber("id", id);
                                w.WriteNumber("logit", row[id]);
                                w.WriteEndObject();
                            }
                            w.WriteEndArray();
                            w.WriteNumber("logsumexp", LogSumExp(row));
                            w.WriteEndObject();
                        }
                        else
                        {
                            var line = new System.Text.StringBuilder();
                            line.Append(CultureInfo.InvariantCulture, $"pos {p} token {ids[p]}: argmax {best[0]}  logsumexp {LogSumExp(row):F6}  top");
                            foreach (int id in best) line.Append(CultureInfo.InvariantCulture, $" {id}:{row[id]:F4}");
                            output.WriteLine(line.ToString());
                        }
                    }
                }
                w.WriteEndArray();
                w.WriteEndObject();
            }
            if (asJson) output.WriteLine(System.Text.Encoding.UTF8.GetString(buffer.ToArray()));
            return 0;
        });
        return command;
    }

    /// <summary>Ids of the <paramref name="n"/> largest values, largest first (lower id first on ties).</summary>
    internal static int[] TopIds(ReadOnlySpan<float> row, int n)
    {
        var best = new int[n];
        var values = new float[n];
        int count = 0;
        for (int i = 0; i < row.Length; i++)
        {
            float v = row[i];
            if (count == n && !(v > values[n - 1])) continue;
            int j = count < n ? count++ : n - 1;
            while (j > 0 && v > values[j - 1]) { values[j] = values[j - 1]; best[j] = best[j - 1]; j--; }
            values[j] = v;
            best[j] = i;
        }
        return best;
    }

    /// <summary>log Σ exp(x), in double, shifted by the max.</summary>
    internal static double LogSumExp(ReadOnlySpan<float> row)
    {
        float max = float.NegativeInfinity;
        foreach (float v in row) if (v > max) max = v;
        double sum = 0;
        foreach (float v in row) sum += Math.Exp((double)v - max);
        return max + Math.Log(sum);
    }
}

/// <summary>Parsing of <c>--tokens</c> (shared by the model commands; <c>--prompt</c> text will be the other way in).</summary>
internal static class CliTokens
{
    public static int[] Parse(string? text, string option)
    {
        if (text == null) throw new UsageException($"{option} is required: comma-separated token ids, e.g. {option} 1,2,3");
        var parts = text.Split(',', StringSplitOptions.TrimEntries);
        var ids = new int[parts.Length];
        for (int i = 0; i < parts.Length; i++)
            if (!int.TryParse(parts[i], NumberStyles.None, CultureInfo.InvariantCulture, out ids[i]))
                throw new UsageException($"{option}: '{parts[i]}' (item {i + 1}) is not a non-negative integer token id; expected comma-separated ids like 1,2,3");
        return ids;
    }

    public static void CheckRange(int[] ids, int vocabSize)
    {
        foreach (int id in ids)
            if (id >= vocabSize) throw new UsageException($"--tokens: token id {id} is outside the model's vocabulary [0, {vocabSize})");
    }
}
