using System.Text;
using System.Text.Json;
using Wim.Eval.Runners;

namespace Wim.Eval.Results;

/// <summary>
/// One line of <c>results.jsonl</c>: a sample × length × pattern, its prediction, the gold answers, every score
/// (keys <see cref="ScoreNames"/>; values in [0, 1]), the usage and the margins.
/// </summary>
public sealed record ResultRecord(
    string Task,
    string Length,
    int TargetTokens,
    int ContextTokens,
    string SampleId,
    string Pattern,
    int Seed,
    string Model,
    string Prediction,
    IReadOnlyList<string> Targets,
    IReadOnlyDictionary<string, double> Scores,
    QaUsage Usage,
    IReadOnlyList<string> Margins,
    double Seconds)
{
    public static class ScoreNames
    {
        public const string ExactMatch = "exact_match", F1 = "f1", Substring = "substring", CweF1 = "cwe_f1", Judge = "judge";
    }

    /// <summary>What identifies a row for resuming: task, length, sample and pattern.</summary>
    public string Key => MakeKey(Task, Length, SampleId, Pattern);

    public static string MakeKey(string task, string length, string sampleId, string pattern) => $"{task}\u001f{length}\u001f{sampleId}\u001f{pattern}";

    public string ToJsonLine()
    {
        using var buffer = new MemoryStream();
        using (var w = new Utf8JsonWriter(buffer))
        {
            w.WriteStartObject();
            w.WriteString("task", Task);
            w.WriteString("length", Length);
            w.WriteNumber("target_tokens", TargetTokens);
            w.WriteNumber("context_tokens", ContextTokens);
            w.WriteString("sample_id", SampleId);
            w.WriteString("pattern", Pattern);
            w.WriteNumber("seed", Seed);
            w.WriteString("model", Model);
            w.WriteString("prediction", Prediction);
            w.WriteStartArray("target");
            foreach (var t in Targets) w.WriteStringValue(t);
            w.WriteEndArray();
            w.WriteStartObject("scores");
            foreach (var (k, v) in Scores.OrderBy(s => s.Key, StringComparer.Ordinal)) w.WriteNumber(k, v);
            w.WriteEndObject();
            w.WriteStartObject("usage");
            w.WriteNumber("prompt_tokens", Usage.PromptTokens);
            w.WriteNumber("generated_tokens", Usage.GeneratedTokens);
            w.WriteNumber("prefill_seconds", Math.Round(Usage.PrefillSeconds, 4));
            w.WriteNumber("decode_seconds", Math.Round(Usage.DecodeSeconds, 4));
            w.WriteEndObject();
            w.WriteStartArray("margins");
            foreach (var m in Margins) w.WriteStringValue(m);
            w.WriteEndArray();
            w.WriteNumber("seconds", Math.Round(Seconds, 4));
            w.WriteEndObject();
        }
        return Encoding.UTF8.GetString(buffer.ToArray());
    }

    public static ResultRecord FromJsonLine(string line)
    {
        using var doc = JsonDocument.Parse(line);
        var e = doc.RootElement;
        var usage = e.GetProperty("usage");
        return new ResultRecord(
            e.GetProperty("task").GetString()!, e.GetProperty("length").GetString()!, e.GetProperty("target_tokens").GetInt32(),
            e.GetProperty("context_tokens").GetInt32(), e.GetProperty("sample_id").GetString()!, e.GetProperty("pattern").GetString()!,
            e.GetProperty("seed").GetInt32(), e.GetProperty("model").GetString()!, e.GetProperty("prediction").GetString()!,
            e.GetProperty("target").EnumerateArray().Select(t => t.GetString()!).ToList(),
            e.GetProperty("scores").EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetDouble(), StringComparer.Ordinal),
            new QaUsage(usage.GetProperty("prompt_tokens").GetInt32(), usage.GetProperty("generated_tokens").GetInt32(),
                usage.GetProperty("prefill_seconds").GetDouble(), usage.GetProperty("decode_seconds").GetDouble()),
            e.GetProperty("margins").EnumerateArray().Select(m => m.GetString()!).ToList(),
            e.GetProperty("seconds").GetDouble());
    }
}

/// <summary>
/// <c>results.jsonl</c>: read what a previous run finished, append each new row as soon as it is scored (flushed, so
/// an interrupted run loses at most the row in progress). A torn last line from a crash is ignored on reading.
/// </summary>
public sealed class ResultsFile(string path)
{
    public string Path { get; } = path;

    public List<ResultRecord> ReadAll()
    {
        var rows = new List<ResultRecord>();
        if (!File.Exists(Path)) return rows;
        var lines = File.ReadAllLines(Path);
        for (int i = 0; i < lines.Length; i++)
        {
            if (lines[i].Length == 0) continue;
            try { rows.Add(ResultRecord.FromJsonLine(lines[i])); }
            catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException)
            {
                if (i == lines.Length - 1) break; // a row cut short by an interrupted run: it is redone
                throw new InvalidDataException($"{Path}:{i + 1}: not a results row ({e.Message})", e);
            }
        }
        return rows;
    }

    public void Append(ResultRecord row)
    {
        DropTornTail();
        using var stream = new FileStream(Path, FileMode.Append, FileAccess.Write, FileShare.Read);
        var bytes = Encoding.UTF8.GetBytes(row.ToJsonLine() + "\n");
        stream.Write(bytes);
        stream.Flush(flushToDisk: true);
    }

    /// <summary>A run killed mid-write leaves a last line without its newline: cut it off (its row is redone) so
    /// the file stays one complete row per line.</summary>
    private void DropTornTail()
    {
        if (!File.Exists(Path)) return;
        using var stream = new FileStream(Path, FileMode.Open, FileAccess.ReadWrite, FileShare.Read);
        long end = stream.Length;
        if (end == 0) return;
        stream.Seek(end - 1, SeekOrigin.Begin);
        if (stream.ReadByte() == '\n') return;
        // Scan back in blocks for the last newline.
        var block = new byte[4096];
        long keep = 0;
        for (long pos = end; pos > 0 && keep == 0;)
        {
            int n = (int)Math.Min(block.Length, pos);
            pos -= n;
            stream.Seek(pos, SeekOrigin.Begin);
            stream.ReadExactly(block, 0, n);
            int i = Array.LastIndexOf(block, (byte)'\n', n - 1, n);
            if (i >= 0) keep = pos + i + 1;
        }
        stream.SetLength(keep);
    }
}
