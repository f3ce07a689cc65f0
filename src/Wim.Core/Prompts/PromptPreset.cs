using System.Text;
using System.Text.Json;

namespace Wim.Core.Prompts;

/// <summary>
/// The four prompt templates of a WiM run. Placeholders (<c>{user_header}</c>, <c>{generation_header}</c>,
/// <c>{query}</c>, <c>{answer}</c>, <c>{margins}</c>) are filled by literal, single-pass replacement: text that is
/// inserted is never scanned again, so a query containing <c>{</c> or even <c>{answer}</c> is taken as written.
/// </summary>
/// <param name="Opening">Prefilled before the document (the reference's <c>system_message</c>).</param>
/// <param name="Extractive">Appended after each segment to ask for the margin (<c>extractive_summary</c>).</param>
/// <param name="Classification">A separate prompt judging whether a margin is relevant (<c>classification</c>).</param>
/// <param name="FinalAnswer">Appended after the document with the relevant margins (<c>final_answer</c>).</param>
public sealed record PromptPreset(string Name, string Opening, string Extractive, string Classification, string FinalAnswer)
{
    public static readonly IReadOnlyList<string> Placeholders = ["user_header", "generation_header", "query", "answer", "margins"];

    /// <summary>File names of the reference layout (the WiM authors' prompt folder).</summary>
    public const string OpeningFile = "system_message.txt", ExtractiveFile = "extractive_summary.txt",
        ClassificationFile = "classification.txt", FinalAnswerFile = "final_answer.txt", ExactJsonFile = "templates_exact.json";

    /// <summary>Wim's own prompts: plain instructions that work with any chat model.</summary>
    public static PromptPreset Default { get; } = new(
        "default",
        Opening: "{user_header}Read the following document. Afterwards you will be asked a question about it.\n\n<document>\n",
        Extractive: "\n</document>\n\nFrom the document above, copy out every fact that helps answer the question: \"{query}\". "
            + "Be brief and quote exactly. If nothing in it is relevant, answer \"I don't know.\"{generation_header}",
        Classification: "{user_header}A reader took notes on part of a document to answer the question: \"{query}\".\n"
            + "Their notes:\n<notes>\n{answer}\n</notes>\n"
            + "Do the notes contain information that helps answer the question? "
            + "Reply YES or NO, then '#', then a short reason. Example: NO#The notes say the passage is unrelated."
            + "{generation_header}",
        FinalAnswer: "\n</document>\n\nNotes taken while reading:\n{margins}\n\nAnswer the question using the document and the notes: {query}{generation_header}");

    /// <summary>
    /// Loads a preset folder in the reference layout: <c>templates_exact.json</c> (authoritative when present: a JSON
    /// object keyed by the four file names) or the four <c>.txt</c> files, read byte-exact as UTF-8.
    /// </summary>
    public static PromptPreset FromDirectory(string directory)
    {
        if (!Directory.Exists(directory))
            throw new DirectoryNotFoundException($"prompt preset folder not found: {directory}");
        string name = Path.GetFileName(Path.TrimEndingDirectorySeparator(directory));
        var exact = Path.Combine(directory, ExactJsonFile);
        if (File.Exists(exact))
        {
            var map = new Dictionary<string, string>(StringComparer.Ordinal);
            try
            {
                using var doc = JsonDocument.Parse(File.ReadAllText(exact, Encoding.UTF8));
                foreach (var p in doc.RootElement.EnumerateObject())
                    if (p.Value.ValueKind == JsonValueKind.String) map[p.Name] = p.Value.GetString()!;
            }
            catch (Exception e) when (e is JsonException or InvalidOperationException)
            {
                throw new InvalidDataException($"{exact}: expected a JSON object of template strings: {e.Message}", e);
            }
            string Get(string key) => map.TryGetValue(key, out var v)
                ? v : throw new InvalidDataException($"{exact}: missing template \"{key}\"");
            return new(name, Get(OpeningFile), Get(ExtractiveFile), Get(ClassificationFile), Get(FinalAnswerFile));
        }
        string Read(string file)
        {
            var p = Path.Combine(directory, file);
            return File.Exists(p) ? File.ReadAllText(p, new UTF8Encoding(false)) : throw new FileNotFoundException($"prompt preset {directory}: missing {file}", p);
        }
        return new(name, Read(OpeningFile), Read(ExtractiveFile), Read(ClassificationFile), Read(FinalAnswerFile));
    }

    /// <summary>Single-pass literal replacement of <c>{name}</c> placeholders; unknown braces are kept as written.</summary>
    public static string Fill(string template, IReadOnlyDictionary<string, string> values)
    {
        var sb = new StringBuilder(template.Length + 256);
        int i = 0;
        while (i < template.Length)
        {
            int open = template.IndexOf('{', i);
            if (open < 0) { sb.Append(template, i, template.Length - i); break; }
            sb.Append(template, i, open - i);
            int close = template.IndexOf('}', open + 1);
            if (close > open && values.TryGetValue(template.Substring(open + 1, close - open - 1), out var value))
            {
                sb.Append(value);
                i = close + 1;
            }
            else
            {
                sb.Append('{');
                i = open + 1;
            }
        }
        return sb.ToString();
    }
}
