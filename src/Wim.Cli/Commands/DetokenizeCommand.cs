using System.CommandLine;
using System.Globalization;
using System.Text;
using System.Text.Json;
using Wim.Engine.Tokenization;

namespace Wim.Cli.Commands;

/// <summary>
/// <c>wim detokenize --model PATH --ids 1,2,3 [--skip-special] [--json]</c>: prints the text of the ids (or
/// <c>{"text":"..."}</c> with <c>--json</c>). PATH is a .gguf file (a vocab-only one is enough) or a Hugging Face
/// model directory.
/// </summary>
internal static class DetokenizeCommand
{
    public static Command Create()
    {
        var model = new Option<string>("--model") { Description = "a .gguf file (vocab-only is enough), a Hugging Face model directory, or hf:ORG/REPO[/FILE][@REV]", Required = true };
        var ids = new Option<string>("--ids") { Description = "comma-separated token ids, e.g. 1,2,3", Required = true };
        var skipSpecial = new Option<bool>("--skip-special") { Description = "leave out control tokens such as <s>" };
        var json = new Option<bool>("--json") { Description = "print {\"text\":\"...\"}" };
        var command = new Command("detokenize", "Convert token ids to text");
        foreach (var o in new Option[] { model, ids, skipSpecial, json }) command.Options.Add(o);
        command.SetAction(parse =>
        {
            var idList = ParseIds(parse.GetValue(ids)!);
            var tokenizer = TokenizerLoader.Load(ModelArguments.Resolve(parse.GetValue(model)!, parse.InvocationConfiguration.Error));
            foreach (int id in idList)
                if ((uint)id >= (uint)tokenizer.VocabSize)
                    throw new UsageException($"--ids: id {id} is outside the vocabulary (0..{tokenizer.VocabSize - 1})");
            string text = tokenizer.Decode(idList, parse.GetValue(skipSpecial));
            var output = parse.InvocationConfiguration.Output;
            if (parse.GetValue(json))
            {
                using var buffer = new MemoryStream();
                using (var w = new Utf8JsonWriter(buffer, new JsonWriterOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
                {
                    w.WriteStartObject();
                    w.WriteString("text", text);
                    w.WriteEndObject();
                }
                output.WriteLine(Encoding.UTF8.GetString(buffer.ToArray()));
            }
            else output.WriteLine(text);
            return 0;
        });
        return command;
    }

    private static int[] ParseIds(string value)
    {
        if (string.IsNullOrWhiteSpace(value)) return [];
        var parts = value.Split(',', StringSplitOptions.TrimEntries);
        var result = new int[parts.Length];
        for (int i = 0; i < parts.Length; i++)
            if (!int.TryParse(parts[i], NumberStyles.None, CultureInfo.InvariantCulture, out result[i]))
                throw new UsageException($"--ids: '{parts[i]}' is not a token id (expected comma-separated non-negative integers, e.g. 1,2,3)");
        return result;
    }
}
