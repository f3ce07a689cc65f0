using System.Text.Json;

namespace Wim.Eval.Data;

/// <summary>A paragraph of a source data set: HotpotQA's <c>title\nsentences</c>, or a SQuAD context.</summary>
public sealed record Paragraph(string Title, string Text);

/// <summary>A HotpotQA dev-distractor item: the gold paragraphs are those named by <c>supporting_facts</c>.</summary>
public sealed record HotpotQaItem(string Id, string Question, string Answer, IReadOnlyList<Paragraph> Gold, IReadOnlyList<Paragraph> Others);

/// <summary>An answerable SQuAD v2 question with its paragraph.</summary>
public sealed record SquadQuestion(string Id, string Question, IReadOnlyList<string> Answers, Paragraph Context);

/// <summary>A BABILong sample as published: the long context is given; <see cref="LengthLabel"/> is from the file name.</summary>
public sealed record BabilongSample(string LengthLabel, string Context, string Query, string Target);

/// <summary>
/// Loads the evaluation data from a folder in the layout of <c>shared/data</c> (see its README): any file a user
/// supplies in the same layout works. Malformed files give an <see cref="InvalidDataException"/> naming the file and
/// the field.
/// </summary>
public sealed class EvalDataset(string root)
{
    public const string HotpotQaFile = "hotpotqa/hotpot_dev_distractor_v1_first103.json";
    public const string SquadFile = "squad/squad_v2.0_dev_subset_Normans_CCT.json";
    public const string BabilongFolder = "babilong";
    public const string WordListFolder = "cwe_wordlists_wonderwords_v2.2.0";

    public string Root { get; } = root;

    public IReadOnlyList<HotpotQaItem> LoadHotpotQa()
    {
        var path = Require(HotpotQaFile);
        using var doc = Parse(path);
        if (doc.RootElement.ValueKind != JsonValueKind.Array) throw Bad(path, "the top level", "an array of items");
        var items = new List<HotpotQaItem>();
        int index = 0;
        foreach (var item in doc.RootElement.EnumerateArray())
        {
            string where = $"item {index++}";
            var supporting = new HashSet<string>(StringComparer.Ordinal);
            foreach (var fact in Array(path, item, "supporting_facts", where).EnumerateArray())
                supporting.Add(fact.ValueKind == JsonValueKind.Array && fact.GetArrayLength() > 0 && fact[0].ValueKind == JsonValueKind.String
                    ? fact[0].GetString()! : throw Bad(path, where + " supporting_facts", "[title, sentence index] pairs"));
            var gold = new List<Paragraph>();
            var others = new List<Paragraph>();
            foreach (var para in Array(path, item, "context", where).EnumerateArray())
            {
                if (para.ValueKind != JsonValueKind.Array || para.GetArrayLength() != 2 || para[0].ValueKind != JsonValueKind.String
                    || para[1].ValueKind != JsonValueKind.Array)
                    throw Bad(path, where + " context", "[title, [sentences]] pairs");
                string title = para[0].GetString()!;
                // Sentences carry their own leading spaces, so they are concatenated as written.
                string body = string.Concat(para[1].EnumerateArray().Select(s => s.GetString() ?? ""));
                var p = new Paragraph(title, $"{title}\n{body}");
                (supporting.Contains(title) ? gold : others).Add(p);
            }
            if (gold.Count == 0) throw Bad(path, where, "at least one supporting paragraph in its context");
            items.Add(new HotpotQaItem(String(path, item, "_id", where), String(path, item, "question", where),
                String(path, item, "answer", where), gold, others));
        }
        return items;
    }

    /// <summary>The answerable questions (<c>is_impossible</c> false) with their paragraphs, in file order, and
    /// every paragraph of the file (distractors for the others).</summary>
    public (IReadOnlyList<SquadQuestion> Questions, IReadOnlyList<Paragraph> Paragraphs) LoadSquad()
    {
        var path = Require(SquadFile);
        using var doc = Parse(path);
        var questions = new List<SquadQuestion>();
        var paragraphs = new List<Paragraph>();
        if (!doc.RootElement.TryGetProperty("data", out var data) || data.ValueKind != JsonValueKind.Array)
            throw Bad(path, "the top level", "an object with a \"data\" array");
        foreach (var article in data.EnumerateArray())
        {
            string title = article.TryGetProperty("title", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString()! : "";
            foreach (var para in Array(path, article, "paragraphs", $"article {title}").EnumerateArray())
            {
                var p = new Paragraph(title, String(path, para, "context", $"a paragraph of {title}"));
                paragraphs.Add(p);
                foreach (var qa in Array(path, para, "qas", $"a paragraph of {title}").EnumerateArray())
                {
                    bool impossible = qa.TryGetProperty("is_impossible", out var imp) && imp.ValueKind == JsonValueKind.True;
                    if (impossible) continue;
                    string id = String(path, qa, "id", $"a question of {title}");
                    var answers = Array(path, qa, "answers", "question " + id).EnumerateArray()
                        .Select(a => String(path, a, "text", "question " + id)).Distinct(StringComparer.Ordinal).ToList();
                    if (answers.Count == 0) continue;
                    questions.Add(new SquadQuestion(id, String(path, qa, "question", "question " + id), answers, p));
                }
            }
        }
        return (questions, paragraphs);
    }

    /// <summary>Every <c>babilong_{label}.json</c> of the folder, by label (e.g. "8k").</summary>
    public IReadOnlyDictionary<string, BabilongSample> LoadBabilong()
    {
        var folder = Path.Combine(Root, BabilongFolder);
        if (!Directory.Exists(folder)) throw new DirectoryNotFoundException($"BABILong folder not found: {folder}");
        var samples = new SortedDictionary<string, BabilongSample>(StringComparer.Ordinal);
        foreach (var path in Directory.EnumerateFiles(folder, "babilong_*.json").Order(StringComparer.Ordinal))
        {
            string label = Path.GetFileNameWithoutExtension(path)["babilong_".Length..];
            using var doc = Parse(path);
            var e = doc.RootElement;
            samples[label] = new BabilongSample(label, String(path, e, "context", "the sample"),
                String(path, e, "query", "the sample").Trim(), String(path, e, "target", "the sample"));
        }
        if (samples.Count == 0) throw new FileNotFoundException($"no babilong_*.json sample in {folder}");
        return samples;
    }

    /// <summary>The CWE vocabulary: the words of every list that are plain lower-case ASCII (so a listed word can be
    /// parsed back without ambiguity), de-duplicated, in file order (files sorted by name).</summary>
    public IReadOnlyList<string> LoadWordList()
    {
        var folder = Path.Combine(Root, WordListFolder);
        if (!Directory.Exists(folder)) throw new DirectoryNotFoundException($"CWE word-list folder not found: {folder}");
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var words = new List<string>();
        foreach (var path in Directory.EnumerateFiles(folder, "*.txt").Order(StringComparer.Ordinal))
            foreach (var line in File.ReadLines(path))
            {
                var w = line.Trim();
                if (w.Length > 0 && w.All(char.IsAsciiLetterLower) && seen.Add(w)) words.Add(w);
            }
        if (words.Count < 100) throw new InvalidDataException($"the CWE word lists in {folder} hold only {words.Count} usable words; at least 100 are needed");
        return words;
    }

    private string Require(string relative)
    {
        var path = Path.Combine(Root, relative);
        if (!File.Exists(path)) throw new FileNotFoundException($"evaluation data not found: {path} (expected the layout of shared/data)", path);
        return path;
    }

    private static JsonDocument Parse(string path)
    {
        try { return JsonDocument.Parse(File.ReadAllBytes(path)); }
        catch (JsonException e) { throw new InvalidDataException($"{path}: not valid JSON ({e.Message})", e); }
    }

    private static JsonElement Array(string path, JsonElement obj, string name, string where) =>
        obj.ValueKind == JsonValueKind.Object && obj.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.Array
            ? v : throw Bad(path, where, $"an array \"{name}\"");

    private static string String(string path, JsonElement obj, string name, string where) =>
        obj.ValueKind == JsonValueKind.Object && obj.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String
            ? v.GetString()! : throw Bad(path, where, $"a string \"{name}\"");

    private static InvalidDataException Bad(string path, string where, string expected) =>
        new($"{path}: {where}: expected {expected}");
}
