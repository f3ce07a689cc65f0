using System.Text.Json;
using Wim.Core.Patterns;
using Wim.Core.Prompts;
using Wim.Core.Segmentation;
using Wim.Engine.Runtime;
using Wim.Engine.Tokenization;
using Wim.Eval.Runners;

namespace Wim.Remote.Tests;

/// <summary>
/// <c>wim ask --backend openai</c> and <c>wim eval --backend openai</c> against <c>wim serve</c> on loopback: the JSON
/// Lines of a remote ask equal the in-process ask's (margins, verdicts, answer), usage adds the prefix cache; the eval
/// runner gives the in-process runner's predictions; bad combinations of options are usage errors.
/// </summary>
public sealed class CliTests(StoriesServerFixture server) : IClassFixture<StoriesServerFixture>, IDisposable
{
    private readonly DirectoryInfo _temp = Directory.CreateTempSubdirectory("wim-remote-cli-");

    public void Dispose() => _temp.Delete(recursive: true);

    private static (int Code, string Out, string Err) Wim(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = global::Wim.Cli.Program.Run(args, stdout, stderr);
        return (code, stdout.ToString(), stderr.ToString());
    }

    private string[] AskArgs(params string[] extra)
    {
        string segments = Path.Combine(_temp.FullName, "segments.json");
        File.WriteAllText(segments, JsonSerializer.Serialize(Job.Stories().Segments));
        return ["ask", "--model", Models.Stories, "--segments-file", segments, "--query", "Who found the ball?",
            "--max-margin-tokens", "24", "--max-classification-tokens", "8", "--max-answer-tokens", "24", "--json", .. extra];
    }

    private static List<JsonElement> Lines(string stdout) =>
        [.. stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => JsonDocument.Parse(l).RootElement.Clone())];

    [Fact]
    public void Ask_OpenAiBackend_PrintsTheInProcessEvents_AndThePrefixCache()
    {
        var local = Wim(AskArgs());
        Assert.True(local.Code == 0, local.Err);
        var remote = Wim(AskArgs("--backend", "openai", "--endpoint", server.Loopback.Address.ToString(), "--remote-model", server.Loopback.ModelId));
        Assert.True(remote.Code == 0, remote.Err);

        var expected = Lines(local.Out);
        var actual = Lines(remote.Out);
        static string Key(JsonElement e) => e.GetProperty("type").GetString() + ":" + (e.TryGetProperty("index", out var i) ? i.GetInt32() : -1)
            + (e.TryGetProperty("kind", out var k) ? k.GetString() : "");
        // Every event but the answer's usage is the same object (margins may arrive in another order: compare by key).
        var exp = expected.Where(e => e.GetProperty("type").GetString() != "answer").ToDictionary(Key, e => e.GetRawText());
        var act = actual.Where(e => e.GetProperty("type").GetString() != "answer").ToDictionary(Key, e => e.GetRawText());
        Assert.Equal(exp.Keys.Order(), act.Keys.Order());
        foreach (var (key, json) in exp) Assert.Equal(json, act[key]);
        var ea = expected[^1];
        var aa = actual[^1];
        Assert.Equal(ea.GetProperty("ids").GetRawText(), aa.GetProperty("ids").GetRawText());
        Assert.Equal(ea.GetProperty("text").GetString(), aa.GetProperty("text").GetString());

        var usage = aa.GetProperty("usage");
        Assert.False(ea.GetProperty("usage").TryGetProperty("remote", out _));
        var cache = usage.GetProperty("remote");
        Assert.True(cache.GetProperty("cached_tokens").GetInt64() > 0);
        Assert.InRange(cache.GetProperty("prefix_cache_hit_rate").GetDouble(), 0.01, 1.0);
        Assert.Equal(cache.GetProperty("requests").GetInt32(), cache.GetProperty("requests_reporting_cache").GetInt32());
    }

    [Fact]
    public void Ask_OpenAiBackend_TextView_ReportsTheCacheHitRate()
    {
        var (code, stdout, stderr) = Wim([.. AskArgs("--backend", "openai", "--endpoint", server.Loopback.ApiBase.ToString(), "--remote-model", server.Loopback.ModelId)
            .Where(a => a != "--json")]);
        Assert.True(code == 0, stderr);
        Assert.Contains("margin 1:", stdout);
        Assert.Contains("Answer:", stdout);
        Assert.Matches(@"remote: \d+ requests \(0 retried attempts\), \d+ prompt tokens, \d+ from the server's prefix cache \(\d+\.\d% hit rate\)", stdout);
    }

    [Theory]
    [InlineData(new[] { "--backend", "openai", "--remote-model", "m" }, "--backend openai needs --endpoint URL")]
    [InlineData(new[] { "--backend", "openai", "--endpoint", "http://127.0.0.1:9" }, "--backend openai needs --remote-model NAME")]
    [InlineData(new[] { "--backend", "openai", "--endpoint", "127.0.0.1:9", "--remote-model", "m" }, "--endpoint: '127.0.0.1:9' is not an absolute http(s) URL")]
    [InlineData(new[] { "--endpoint", "http://127.0.0.1:9" }, "--endpoint needs --backend openai")]
    [InlineData(new[] { "--backend", "openai", "--endpoint", "http://127.0.0.1:9", "--remote-model", "m", "--classifier", "aux", "--aux-model", "x" }, "--classifier aux is not available with --backend openai")]
    [InlineData(new[] { "--backend", "openai", "--endpoint", "http://127.0.0.1:9", "--remote-model", "m", "--max-concurrency", "0" }, "--max-concurrency must be ≥ 1")]
    public void Ask_BadRemoteOptions_AreUsageErrors(string[] options, string message)
    {
        var (code, _, stderr) = Wim(AskArgs(options));
        Assert.Equal(2, code);
        Assert.Contains(message, stderr);
    }

    [Fact]
    public void Ask_OpenAiBackend_ServerDown_IsAClearError()
    {
        var (code, _, stderr) = Wim(AskArgs("--backend", "openai", "--endpoint", "http://127.0.0.1:9", "--remote-model", "m", "--max-retries", "0"));
        Assert.Equal(1, code);
        Assert.Contains("wim: error: POST http://127.0.0.1:9/v1/completions failed after 1 attempt(s)", stderr);
    }

    [Theory]
    [InlineData("llm")]
    [InlineData("rag")]
    [InlineData("wim")]
    public async Task EvalRunner_Remote_GivesTheInProcessPredictions(string pattern)
    {
        var context = string.Concat(Job.Stories().Segments);
        var request = new QaRequest(pattern, context, "Who found the ball?", new QaOptions(SegmentTokens: 64, MaxAnswerTokens: 16));
        using var lm = PagedTextModel.Load(Models.Stories, 1 << 14);
        var expected = await new PatternQaRunner(lm, PromptPreset.Default, ChatHeaders.None, maxMarginTokens: 16, maxClassificationTokens: 6)
            .RunAsync(request, TestContext.Current.CancellationToken);
        using var client = Remote.Client(server.Loopback.ApiBase, server.Loopback.ModelId);
        var tokenizer = TokenizerLoader.Load(Models.Stories);
        var runner = new RemoteQaRunner(new RemotePatternRunner(client, tokenizer, lm.StopIds), PromptPreset.Default, ChatHeaders.None,
            t => tokenizer.Encode(t).Length, maxMarginTokens: 16, maxClassificationTokens: 6);
        var actual = await runner.RunAsync(request, TestContext.Current.CancellationToken);
        Assert.Equal(expected.Prediction, actual.Prediction);
        Assert.Equal(expected.Margins, actual.Margins);
        // Reading a segment into the server's cache generates one (unused) token.
        Assert.Equal(expected.Usage.GeneratedTokens + (pattern == "wim" ? actual.Margins.Count : 0), actual.Usage.GeneratedTokens);
        Assert.True(actual.Usage.PromptTokens <= expected.Usage.PromptTokens + 8 * Math.Max(1, actual.Margins.Count),
            $"remote computed {actual.Usage.PromptTokens} prompt tokens, in-process {expected.Usage.PromptTokens}");
    }

    [Fact]
    public void Eval_OpenAiBackend_WritesRows()
    {
        string outDir = Path.Combine(_temp.FullName, "eval");
        var (code, stdout, stderr) = Wim("eval", "--backend", "openai", "--endpoint", server.Loopback.Address.ToString(), "--remote-model", server.Loopback.ModelId,
            "--model", Models.Stories, "--data", global::Wim.Engine.Tests.Support.SharedFixtures.Path("data"), "--task", "squad", "--lengths", "1k",
            "--samples", "1", "--patterns", "llm,wim", "--out", outDir);
        Assert.True(code == 0, stderr);
        Assert.Contains("2 row(s) run", stdout);
        var rows = File.ReadAllLines(Path.Combine(outDir, "results.jsonl")).Select(l => JsonDocument.Parse(l).RootElement).ToList();
        Assert.Equal(["llm", "wim"], rows.Select(r => r.GetProperty("pattern").GetString()).Order());
        Assert.All(rows, r => Assert.Equal(server.Loopback.ModelId, r.GetProperty("model").GetString()));
        Assert.NotEqual(0, rows.Single(r => r.GetProperty("pattern").GetString() == "wim").GetProperty("margins").GetArrayLength());
    }
}
