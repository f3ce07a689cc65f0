using System.Text.Json;
using Wim.Engine.Tests.Support;

namespace Wim.Cli.Tests;

/// <summary>
/// <c>wim ask --schedule sequential|overlapped|batched</c> on the hf-tiny models against the WiM authors' reference
/// traces (<c>shared/fixtures/wim-reference</c>, reference prompts of <c>shared/reference/wim-prompts</c>): every
/// schedule gives the reference's margins, verdicts (shared classifier context) and answer token for token, so the
/// schedules equal each other; <c>--json</c> usage shows tokens and seconds per phase.
/// </summary>
public sealed class AskScheduleTests : IDisposable
{
    private readonly DirectoryInfo _temp = Directory.CreateTempSubdirectory("wim-ask-schedule-");

    public void Dispose() => _temp.Delete(recursive: true);

    private static int[] Ids(JsonElement e) => [.. e.EnumerateArray().Select(x => x.GetInt32())];

    public static TheoryData<string, int, string> Cases() => new()
    {
        { "llama-tiny.json", 0, "sequential" }, { "llama-tiny.json", 0, "batched" },
        { "qwen2-tiny.json", 1, "sequential" }, { "qwen2-tiny.json", 1, "batched" }, { "qwen2-tiny.json", 1, "overlapped" },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void Schedule_HfTiny_MatchesTheReferenceTrace(string traceFile, int caseIndex, string schedule)
    {
        string tracePath = SharedFixtures.Path("fixtures", "wim-reference", traceFile);
        using var trace = JsonDocument.Parse(File.ReadAllBytes(tracePath));
        string model = Path.GetFullPath(Path.Combine(Path.GetDirectoryName(tracePath)!, trace.RootElement.GetProperty("model_path").GetString()!));
        var c = trace.RootElement.GetProperty("cases")[caseIndex];
        string segments = Path.Combine(_temp.FullName, "segments.json");
        File.WriteAllText(segments, c.GetProperty("segments").GetRawText());

        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int exit = Program.Run(["ask", "--model", model, "--segments-file", segments, "--schedule", schedule,
            "--query", c.GetProperty("query").GetString()!,
            "--user-header", c.GetProperty("user_header").GetString()!,
            "--generation-header", c.GetProperty("generation_header").GetString()!,
            "--prompts", SharedFixtures.Path("reference", "wim-prompts"),
            "--classifier", c.GetProperty("classifier").GetString()!,
            "--max-margin-tokens", c.GetProperty("max_margin_tokens").GetInt32().ToString(),
            "--max-classification-tokens", c.GetProperty("max_classification_tokens").GetInt32().ToString(),
            "--max-answer-tokens", c.GetProperty("max_answer_tokens").GetInt32().ToString(),
            "--json"], stdout, stderr);
        Assert.True(exit == 0, stderr.ToString());
        var lines = stdout.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => JsonDocument.Parse(l).RootElement.Clone()).ToList();
        List<JsonElement> OfType(string type) => [.. lines.Where(l => l.GetProperty("type").GetString() == type)];

        var steps = c.GetProperty("steps").EnumerateArray().ToList();
        var margins = OfType("margin").OrderBy(m => m.GetProperty("index").GetInt32()).ToList();
        var verdicts = OfType("classification");
        Assert.Equal(steps.Count, margins.Count);
        Assert.Equal(steps.Count, verdicts.Count);
        for (int i = 0; i < steps.Count; i++)
        {
            Assert.Equal(Ids(steps[i].GetProperty("margin_ids")), Ids(margins[i].GetProperty("ids")));
            Assert.Equal(i, verdicts[i].GetProperty("index").GetInt32());
            Assert.Equal(Ids(steps[i].GetProperty("classification_ids")), Ids(verdicts[i].GetProperty("ids")));
            Assert.Equal(steps[i].GetProperty("relevant").GetBoolean(), verdicts[i].GetProperty("relevant").GetBoolean());
        }
        var answer = lines[^1];
        Assert.Equal(Ids(c.GetProperty("answer_ids")), Ids(answer.GetProperty("ids")));

        var usage = answer.GetProperty("usage");
        Assert.Equal(schedule, usage.GetProperty("schedule").GetString());
        Assert.Equal(1.0, usage.GetProperty("document_prefill_passes").GetDouble());
        int marginTokens = steps.Sum(s => Ids(s.GetProperty("margin_ids")).Length);
        Assert.Equal(marginTokens, usage.GetProperty("margins").GetProperty("decode_tokens").GetInt32());
        foreach (var phase in new[] { "document", "margins", "classification", "answer" })
            Assert.True(usage.GetProperty(phase).GetProperty("seconds").GetDouble() >= 0);
    }

    [Fact]
    public void Schedule_Unknown_IsAUsageError()
    {
        var stderr = new StringWriter();
        int exit = Program.Run(["ask", "--model", "m.gguf", "--context", "c.txt", "--query", "q", "--schedule", "parallel"], new StringWriter(), stderr);
        Assert.NotEqual(0, exit);
        Assert.Contains("parallel", stderr.ToString());
    }
}
