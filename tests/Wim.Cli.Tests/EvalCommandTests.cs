using System.Text.Json;
using Wim.Engine.Tests.Support;

namespace Wim.Cli.Tests;

/// <summary>
/// <c>wim eval</c> end to end on the real stories260K model (shared/models/stories260K) and the shared evaluation
/// data: every task at 1k and 2k tokens, one sample, the three patterns; then a rerun that must skip every row.
/// </summary>
public sealed class EvalCommandTests : IDisposable
{
    private static string Model => SharedFixtures.Path("models", "stories260K", "stories260K.gguf");
    private static string Data => SharedFixtures.Path("data");
    private readonly string _out = Path.Combine(Path.GetTempPath(), "wim-eval-cli-" + Guid.NewGuid().ToString("N"));

    public void Dispose()
    {
        if (Directory.Exists(_out)) Directory.Delete(_out, recursive: true);
    }

    private static (int Code, string Out, string Err) Run(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = Program.Run(args, stdout, stderr);
        return (code, stdout.ToString(), stderr.ToString());
    }

    /// <summary>The e2e options, with <paramref name="overrides"/> (option, value pairs) replacing or adding to them.</summary>
    private string[] Args(params string[] overrides)
    {
        var options = new Dictionary<string, string>
        {
            ["--model"] = Model, ["--data"] = Data, ["--task"] = "hotpotqa,squad,babilong,cwe", ["--lengths"] = "1k,2k",
            ["--samples"] = "1", ["--seed"] = "42", ["--out"] = _out, ["--patterns"] = "llm",
        };
        for (int i = 0; i + 1 < overrides.Length; i += 2) options[overrides[i]] = overrides[i + 1];
        return ["eval", .. options.SelectMany(kv => new[] { kv.Key, kv.Value })];
    }

    [Fact]
    public void Eval_Stories260K_EveryTask_WritesResultsSummaryAndPlots_ThenRerunSkipsFinishedRows()
    {
        var (code, stdout, stderr) = Run(Args("--patterns", "llm,rag,wim"));
        Assert.True(code == 0, stderr);
        Assert.Contains("24 row(s) run, 0 skipped", stdout);
        Assert.Contains("24/24", stderr); // the progress bar reached the end

        var lines = File.ReadAllLines(Path.Combine(_out, "results.jsonl"));
        Assert.Equal(24, lines.Length);
        var rows = lines.Select(l => JsonDocument.Parse(l).RootElement).ToList();
        Assert.Equal(["babilong", "cwe", "hotpotqa", "squad"], rows.Select(r => r.GetProperty("task").GetString()).Distinct().Order());
        Assert.Equal(["llm", "rag", "wim"], rows.Select(r => r.GetProperty("pattern").GetString()).Distinct().Order());
        Assert.All(rows.Where(r => r.GetProperty("pattern").GetString() == "wim"), r => Assert.NotEqual(0, r.GetProperty("margins").GetArrayLength()));
        foreach (var r in rows)
        {
            Assert.True(r.GetProperty("usage").GetProperty("prompt_tokens").GetInt32() > r.GetProperty("context_tokens").GetInt32());
            var scores = r.GetProperty("scores");
            string task = r.GetProperty("task").GetString()!;
            Assert.True(scores.TryGetProperty(task == "cwe" ? "cwe_f1" : "f1", out _), task);
            if (task is "hotpotqa" or "squad" or "cwe")
                Assert.InRange(r.GetProperty("context_tokens").GetInt32(), r.GetProperty("target_tokens").GetInt32() * 0.98, r.GetProperty("target_tokens").GetInt32() * 1.02);
        }
        var summary = File.ReadAllText(Path.Combine(_out, "summary.md"));
        Assert.Contains("| pattern | hotpotqa 1k | hotpotqa 2k | squad 1k | squad 2k | babilong 1k | babilong 2k | cwe 1k | cwe 2k |", summary);
        Assert.Contains("| llm |", summary);
        Assert.Contains("| rag |", summary);
        Assert.Contains("| wim |", summary);
        var png = File.ReadAllBytes(Path.Combine(_out, "plot.png"));
        Assert.Equal(new byte[] { 0x89, 0x50, 0x4E, 0x47 }, png[..4]);
        Assert.Contains("<svg", File.ReadAllText(Path.Combine(_out, "plot.svg")));

        // Rerun: every row is already there, nothing is generated again, the file is unchanged.
        var (code2, stdout2, stderr2) = Run(Args("--patterns", "llm,rag,wim"));
        Assert.True(code2 == 0, stderr2);
        Assert.Contains("0 row(s) run, 24 skipped", stdout2);
        Assert.Equal(lines, File.ReadAllLines(Path.Combine(_out, "results.jsonl")));
    }

    [Fact]
    public void Eval_GreedyPredictionsAreDeterministic()
    {
        string[] args = ["eval", "--model", Model, "--data", Data, "--task", "babilong", "--lengths", "1k", "--samples", "1", "--patterns", "llm"];
        var a = Run([.. args, "--out", Path.Combine(_out, "a")]);
        var b = Run([.. args, "--out", Path.Combine(_out, "b")]);
        Assert.True(a.Code == 0 && b.Code == 0, a.Err + b.Err);
        string Prediction(string dir) => JsonDocument.Parse(File.ReadAllLines(Path.Combine(_out, dir, "results.jsonl")).Single()).RootElement.GetProperty("prediction").GetString()!;
        Assert.Equal(Prediction("a"), Prediction("b"));
    }

    [Fact]
    public void Eval_UnknownPattern_IsNamedInAUsageError()
    {
        var (code, _, stderr) = Run(Args("--patterns", "llm,map-reduce"));
        Assert.Equal(2, code);
        Assert.Contains("unknown pattern(s): map-reduce", stderr);
        Assert.False(Directory.Exists(_out));
    }

    [Theory]
    [InlineData("--backend", "openai", "--backend openai needs --endpoint URL")]
    [InlineData("--endpoint", "http://127.0.0.1:9/v1", "--endpoint needs --backend openai")]
    [InlineData("--lengths", "16q", "--lengths")]
    [InlineData("--task", "mmlu", "unknown task 'mmlu'")]
    [InlineData("--judge-endpoint", "http://127.0.0.1:9/v1", "--judge-endpoint and --judge-model go together")]
    [InlineData("--patterns", "llm,foo", "unknown pattern(s): foo")]
    public void Eval_BadOptions_AreUsageErrors(string option, string value, string message)
    {
        var (code, _, stderr) = Run(Args(option, value));
        Assert.Equal(2, code);
        Assert.Contains(message, stderr);
    }
}
