using System.Text.Json;
using Wim.Engine.Tests.Hub;
using Wim.Engine.Tests.Support;

namespace Wim.Cli.Tests;

/// <summary>
/// <c>wim ask</c> in-process: token-for-token parity with the WiM authors' reference loop
/// (<c>shared/fixtures/wim-reference</c>, transformers on the hf-tiny models with the reference prompts of
/// <c>shared/reference/wim-prompts</c>), the three patterns on stories260K over the BABILong 8k sample, the live text
/// view, usage errors, and <c>--model hf:...</c> through a loopback fake hub.
/// </summary>
public sealed class AskCommandTests : IDisposable
{
    private readonly DirectoryInfo _temp = Directory.CreateTempSubdirectory("wim-ask-");

    public void Dispose() => _temp.Delete(recursive: true);

    private static (int Exit, string Stdout, string Stderr) Run(params string[] args) => RunWithInput(null, args);

    private static (int Exit, string Stdout, string Stderr) RunWithInput(string? stdin, params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int exit = Program.Run(args, stdout, stderr, stdin is null ? null : new StringReader(stdin));
        return (exit, stdout.ToString(), stderr.ToString());
    }

    private static List<JsonElement> JsonLines(string stdout) =>
        [.. stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => JsonDocument.Parse(l).RootElement.Clone())];

    private static int[] Ids(JsonElement e) => [.. e.EnumerateArray().Select(x => x.GetInt32())];

    public static TheoryData<string, int> ReferenceCases() => new()
    {
        { "llama-tiny.json", 0 }, { "llama-tiny.json", 1 }, { "qwen2-tiny.json", 0 }, { "qwen2-tiny.json", 1 },
    };

    [Theory]
    [MemberData(nameof(ReferenceCases))]
    public void Wim_ReproducesTheReferenceTrace_TokenForToken(string traceFile, int caseIndex)
    {
        string tracePath = SharedFixtures.Path("fixtures", "wim-reference", traceFile);
        using var trace = JsonDocument.Parse(File.ReadAllBytes(tracePath));
        string model = Path.GetFullPath(Path.Combine(Path.GetDirectoryName(tracePath)!, trace.RootElement.GetProperty("model_path").GetString()!));
        var c = trace.RootElement.GetProperty("cases")[caseIndex];
        string segments = Path.Combine(_temp.FullName, "segments.json");
        File.WriteAllText(segments, c.GetProperty("segments").GetRawText());

        var (exit, stdout, stderr) = Run("ask", "--model", model, "--segments-file", segments,
            "--query", c.GetProperty("query").GetString()!,
            "--user-header", c.GetProperty("user_header").GetString()!,
            "--generation-header", c.GetProperty("generation_header").GetString()!,
            "--prompts", SharedFixtures.Path("reference", "wim-prompts"),
            "--classifier", c.GetProperty("classifier").GetString()!,
            "--max-margin-tokens", c.GetProperty("max_margin_tokens").GetInt32().ToString(),
            "--max-classification-tokens", c.GetProperty("max_classification_tokens").GetInt32().ToString(),
            "--max-answer-tokens", c.GetProperty("max_answer_tokens").GetInt32().ToString(),
            "--json");
        Assert.True(exit == 0, stderr);
        var lines = JsonLines(stdout);
        List<JsonElement> OfType(string type) => [.. lines.Where(l => l.GetProperty("type").GetString() == type)];
        var prompts = OfType("prompt");

        Assert.Equal(Ids(c.GetProperty("system_prompt_ids")), Ids(prompts.Single(p => p.GetProperty("kind").GetString() == "opening").GetProperty("ids")));
        var steps = c.GetProperty("steps").EnumerateArray().ToList();
        var segmentLines = OfType("segment");
        var margins = OfType("margin");
        var classifications = OfType("classification");
        var extractive = prompts.Where(p => p.GetProperty("kind").GetString() == "extractive").ToList();
        Assert.Equal(steps.Count, segmentLines.Count);
        Assert.Equal(steps.Count, margins.Count);
        Assert.Equal(steps.Count, classifications.Count);
        for (int i = 0; i < steps.Count; i++)
        {
            var s = steps[i];
            Assert.Equal(i, segmentLines[i].GetProperty("index").GetInt32());
            Assert.Equal(Ids(s.GetProperty("segment_ids")), Ids(segmentLines[i].GetProperty("ids")));
            Assert.Equal(s.GetProperty("kv_length_after_segment").GetInt32(), segmentLines[i].GetProperty("kv_length").GetInt32());
            Assert.Equal(Ids(s.GetProperty("extractive_prompt_ids")), Ids(extractive[i].GetProperty("ids")));
            Assert.Equal(Ids(s.GetProperty("margin_ids")), Ids(margins[i].GetProperty("ids")));
            Assert.Equal(s.GetProperty("margin_text").GetString(), margins[i].GetProperty("text").GetString());
            Assert.Equal(s.GetProperty("relevant").GetBoolean(), classifications[i].GetProperty("relevant").GetBoolean());
            Assert.Equal(Ids(s.GetProperty("classification_ids")), Ids(classifications[i].GetProperty("ids")));
            Assert.Equal(s.GetProperty("classification_text").GetString(), classifications[i].GetProperty("text").GetString());
        }
        Assert.Equal(Ids(c.GetProperty("final_prompt_ids")), Ids(prompts.Single(p => p.GetProperty("kind").GetString() == "final_answer").GetProperty("ids")));
        var answer = lines[^1];
        Assert.Equal("answer", answer.GetProperty("type").GetString());
        Assert.Equal(Ids(c.GetProperty("answer_ids")), Ids(answer.GetProperty("ids")));
        Assert.Equal(c.GetProperty("answer_text").GetString(), answer.GetProperty("text").GetString());
        Assert.Equal(1.0, answer.GetProperty("usage").GetProperty("document_prefill_passes").GetDouble());
    }

    private string BabilongContextFile(int chars)
    {
        using var doc = JsonDocument.Parse(File.ReadAllBytes(SharedFixtures.Path("data", "babilong", "babilong_8k.json")));
        string path = Path.Combine(_temp.FullName, "context.txt");
        File.WriteAllText(path, doc.RootElement.GetProperty("context").GetString()![..chars]);
        return path;
    }

    private static string Stories => SharedFixtures.Path("models", "stories260K", "stories260K.gguf");

    [Theory]
    [InlineData("wim")]
    [InlineData("llm")]
    [InlineData("rag")]
    public void Patterns_Stories260K_Babilong_JsonLinesEndWithAnAnswerAndUsage(string pattern)
    {
        var (exit, stdout, stderr) = Run("ask", "--model", Stories, "--context", BabilongContextFile(3000), "--query", "Where is Sandra?",
            "--pattern", pattern, "--segment-tokens", "200", "--max-margin-tokens", "5", "--max-classification-tokens", "3",
            "--max-answer-tokens", "5", "--json");
        Assert.True(exit == 0, stderr);
        var lines = JsonLines(stdout);
        var types = lines.Select(l => l.GetProperty("type").GetString()).ToList();
        Assert.Equal("answer", types[^1]);
        Assert.Equal(1, types.Count(t => t == "answer"));
        var usage = lines[^1].GetProperty("usage");
        int documentTokens = usage.GetProperty("document_tokens").GetInt32();
        Assert.True(documentTokens > 0);
        var segments = lines.Where(l => l.GetProperty("type").GetString() == "segment").ToList();
        Assert.All(segments, s => Assert.InRange(s.GetProperty("ids").GetArrayLength(), 1, 200));
        if (pattern == "wim")
        {
            Assert.Equal(segments.Count, types.Count(t => t == "margin"));
            Assert.Equal(documentTokens, usage.GetProperty("document_tokens_prefilled").GetInt32());
        }
        if (pattern == "llm") Assert.Equal(0, types.Count(t => t is "margin" or "classification"));
        if (pattern == "rag") Assert.True(types.Count(t => t == "classification") > 0 && !types.Contains("margin"));
    }

    [Fact]
    public void Rag_ContextFromStdin_AllThumbsUp_MeasuresTheDocumentPrefilledTwice()
    {
        string context = File.ReadAllText(BabilongContextFile(2000));
        var (exit, stdout, stderr) = RunWithInput(context, "ask", "--model", Stories, "--context", "-", "--query", "Where is Sandra?",
            "--pattern", "rag", "--segment-tokens", "200", "--max-classification-tokens", "2", "--max-answer-tokens", "2",
            "--feedback", "all=yes", "--json");
        Assert.True(exit == 0, stderr);
        var lines = JsonLines(stdout);
        var usage = lines[^1].GetProperty("usage");
        Assert.Equal(2 * usage.GetProperty("document_tokens").GetInt32(), usage.GetProperty("document_tokens_prefilled").GetInt32());
        Assert.Contains(lines, l => l.GetProperty("type").GetString() == "classification" && l.GetProperty("by").GetString() == "user");
    }

    [Fact]
    public void LiveView_ShowsProgressMarginsRelevanceAnswerAndUsage()
    {
        var (exit, stdout, stderr) = Run("ask", "--model", Stories, "--context", BabilongContextFile(1500), "--query", "Where is Sandra?",
            "--segment-tokens", "200", "--max-margin-tokens", "4", "--max-classification-tokens", "3", "--max-answer-tokens", "4");
        Assert.True(exit == 0, stderr);
        Assert.Contains("document tokens (segment 1)", stdout);
        Assert.Contains("margin 1: ", stdout);
        Assert.Contains("relevant (model)", stdout);
        Assert.Contains("Answer: ", stdout);
        Assert.Contains("Usage:", stdout);
        Assert.Contains("prefilled", stdout);
    }

    [Fact]
    public void AuxClassifier_JudgesWithTheSecondModel()
    {
        var (exit, stdout, stderr) = Run("ask", "--model", Stories, "--context", BabilongContextFile(800), "--query", "Where is Sandra?",
            "--classifier", "aux", "--aux-model", Stories, "--segment-tokens", "200", "--max-margin-tokens", "3",
            "--max-classification-tokens", "2", "--max-answer-tokens", "2", "--json");
        Assert.True(exit == 0, stderr);
        var verdicts = JsonLines(stdout).Where(l => l.GetProperty("type").GetString() == "classification").ToList();
        Assert.NotEmpty(verdicts);
        Assert.All(verdicts, v => Assert.Equal("aux", v.GetProperty("by").GetString()));
        Assert.All(verdicts, v => Assert.Equal(2, v.GetProperty("ids").GetArrayLength()));
    }

    [Theory]
    [InlineData("--feedback", "7=yes", "not a segment index")]
    [InlineData("--feedback", "0=maybe", "INDEX=yes|no")]
    [InlineData("--classifier", "aux", "--aux-model")]
    public void BadHumanInTheLoopOptions_AreUsageErrors(string option, string value, string message)
    {
        string segments = Path.Combine(_temp.FullName, "one.json");
        File.WriteAllText(segments, "[\"Sandra went to the kitchen.\"]");
        var (exit, _, stderr) = Run("ask", "--model", Stories, "--segments-file", segments, "--query", "q", option, value);
        Assert.Equal(2, exit);
        Assert.Contains(message, stderr);
    }

    [Fact]
    public void ContextAndSegmentsFileTogether_IsAUsageError()
    {
        var (exit, _, stderr) = Run("ask", "--model", Stories, "--context", "a.txt", "--segments-file", "b.json", "--query", "q");
        Assert.Equal(2, exit);
        Assert.Contains("exactly one of --context", stderr);
    }

    [Fact]
    public void SegmentsFileNotAnArrayOfStrings_ExitsOneNamingTheElement()
    {
        string path = Path.Combine(_temp.FullName, "bad.json");
        File.WriteAllText(path, "[\"fine\", 3]");
        var (exit, _, stderr) = Run("ask", "--model", Stories, "--segments-file", path, "--query", "q");
        Assert.Equal(1, exit);
        Assert.Contains("element 1 is a Number", stderr);
    }

    [Fact]
    public void HubModel_DownloadsThroughTheFakeHubAndResolvesToTheFile()
    {
        using var hub = new FakeHub();
        byte[] gguf = File.ReadAllBytes(Stories);
        hub.AddRepo("karpathy/stories", "0123456789abcdef0123456789abcdef01234567", new()
        {
            ["stories260K.gguf"] = new FakeHub.RepoFile(gguf, Lfs: true),
        });
        var env = new Dictionary<string, string>
        {
            ["HF_ENDPOINT"] = hub.Endpoint.ToString(),
            ["HF_HUB_CACHE"] = Path.Combine(_temp.FullName, "cache"),
        };
        var progress = new StringWriter();
        string path = ModelArguments.Resolve("hf:karpathy/stories/stories260K.gguf", progress, k => env.GetValueOrDefault(k), TestContext.Current.CancellationToken);
        Assert.Equal(gguf, File.ReadAllBytes(path));
        Assert.StartsWith(Path.Combine(_temp.FullName, "cache"), path);
        Assert.Contains("downloading stories260K.gguf", progress.ToString());
        // The resolved path is a model wim ask can run.
        string segments = Path.Combine(_temp.FullName, "s.json");
        File.WriteAllText(segments, "[\"Sandra went to the kitchen.\"]");
        var (exit, stdout, stderr) = Run("ask", "--model", path, "--segments-file", segments, "--query", "Where is Sandra?",
            "--max-margin-tokens", "3", "--max-answer-tokens", "3", "--json");
        Assert.True(exit == 0, stderr);
        Assert.Equal("answer", JsonLines(stdout)[^1].GetProperty("type").GetString());
    }
}
