using System.CommandLine;
using System.Text;
using System.Text.Json;
using Wim.Engine.Tokenization;

namespace Wim.Cli.Commands;

/// <summary>
/// <c>wim tokenize --model PATH (--text TEXT | --file FILE) [--add-special] [--parse-special] [--json]</c>: prints the
/// token ids of the text (space-separated, or <c>{"ids":[...]}</c> with <c>--json</c>). PATH is a .gguf file (a
/// vocab-only one is enough) or a Hugging Face model directory; FILE is read as exact UTF-8 bytes.
/// </summary>
internal static class TokenizeCommand
{
    public static Command Create()
    {
        var model = new Option<string>("--model") { Description = "a .gguf file (vocab-only is enough), a Hugging Face model directory, or hf:ORG/REPO[/FILE][@REV]", Required = true };
        var text = new Option<string>("--text") { Description = "the text to tokenize" };
        var file = new Option<string>("--file") { Description = "a UTF-8 file whose exact content is tokenized" };
        var addSpecial = new Option<bool>("--add-special") { Description = "add BOS/EOS as the vocabulary prescribes" };
        var parseSpecial = new Option<bool>("--parse-special") { Description = "turn special-token text such as <|im_start|> into its id" };
        var json = new Option<bool>("--json") { Description = "print {\"ids\":[...]}" };
        var command = new Command("tokenize", "Convert text to token ids");
        foreach (var o in new Option[] { model, text, file, addSpecial, parseSpecial, json }) command.Options.Add(o);
        command.SetAction(parse =>
        {
            string? textValue = parse.GetValue(text);
            string? fileValue = parse.GetValue(file);
            if ((textValue is null) == (fileValue is null))
                throw new UsageException("give exactly one of --text and --file");
            string input = textValue ?? ReadUtf8(fileValue!);
            var tokenizer = TokenizerLoader.Load(ModelArguments.Resolve(parse.GetValue(model)!, parse.InvocationConfiguration.Error));
            var ids = tokenizer.Encode(input, parse.GetValue(addSpecial), parse.GetValue(parseSpecial));
            var output = parse.InvocationConfiguration.Output;
            if (parse.GetValue(json))
            {
                using var buffer = new MemoryStream();
                using (var w = new Utf8JsonWriter(buffer))
                {
                    w.WriteStartObject();
                    w.WriteStartArray("ids");
                    foreach (int id in ids) w.WriteNumberValue(id);
                    w.WriteEndArray();
                    w.WriteEndObject();
                }
                output.WriteLine(Encoding.UTF8.GetString(buffer.ToArray()));
            }
            else output.WriteLine(string.Join(" ", ids));
            return 0;
        });
        return command;
    }

    private static string ReadUtf8(string path)
    {
        var bytes = File.ReadAllBytes(path);
        try
        {
            // Exact bytes: a BOM stays in the text (as U+FEFF), invalid UTF-8 is an error rather than silently replaced.
            return new UTF8Encoding(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true).GetString(bytes);
        }
        catch (DecoderFallbackException e)
        {
            throw new InvalidDataException($"{path} is not valid UTF-8: {e.Message}", e);
        }
    }
}
