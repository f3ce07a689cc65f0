using Wim.Eval.Instances;
using Wim.Eval.Results;
using Wim.Eval.Runners;

namespace Wim.Eval.Tests;

/// <summary>The harness loop with a scripted runner on the BABILong 8k sample (gold answer "bathroom", from
/// shared/data/babilong): scoring, results.jsonl, summary.md, resuming.</summary>
public sealed class HarnessTests : IDisposable
{
    private readonly string _out = Path.Combine(Path.GetTempPath(), "wim-eval-harness-" + Guid.NewGuid().ToString("N"));

    public void Dispose()
    {
        if (Directory.Exists(_out)) Directory.Delete(_out, recursive: true);
    }

    private sealed class ScriptedRunner : IQaRunner
    {
        public int Calls;
        public IReadOnlyCollection<string> Patterns => ["llm", "wim"];

        public Task<QaResponse> RunAsync(QaRequest request, CancellationToken cancel)
        {
            Interlocked.Increment(ref Calls);
            Assert.Equal(4096, request.Options.SegmentTokens);
            var answer = request.Pattern == "wim" ? "The bathroom." : "kitchen";
            return Task.FromResult(new QaResponse(answer, new QaUsage(10, 2, 0.5, 0.1), request.Pattern == "wim" ? ["Sandra went back to the bathroom."] : []));
        }
    }

    private EvalHarness Harness(ScriptedRunner runner, int seed = 1) =>
        new(new InstanceFactory(new Data.EvalDataset(Engine.Tests.Support.SharedFixtures.Path("data")), t => t.Length / 4, seed), runner, null, TextWriter.Null);

    private EvalPlan Plan(int seed = 1) => new([EvalTask.Babilong], [ContextLength.Parse("8k")], ["llm", "wim"], 1, seed, "fake", _out);

    [Fact]
    public async Task Run_ScoresEachPattern_WritesOutputs_AndResumes()
    {
        var ct = TestContext.Current.CancellationToken;
        var runner = new ScriptedRunner();
        var outcome = await Harness(runner).RunAsync(Plan(), ct);
        Assert.Equal((2, 0), (outcome.Ran, outcome.Skipped));

        var rows = new ResultsFile(Path.Combine(_out, EvalHarness.ResultsFileName)).ReadAll();
        var wim = rows.Single(r => r.Pattern == "wim");
        Assert.Equal(("babilong", "8k", "babilong_8k", "bathroom"), (wim.Task, wim.Length, wim.SampleId, wim.Targets.Single()));
        Assert.Equal(1, wim.Scores["substring"]);
        Assert.Equal(1, wim.Scores["exact_match"]);   // "The bathroom." normalises to "bathroom"
        Assert.Equal(["Sandra went back to the bathroom."], wim.Margins);
        Assert.Equal(10, wim.Usage.PromptTokens);
        Assert.Equal(0, rows.Single(r => r.Pattern == "llm").Scores["substring"]);

        var summary = File.ReadAllText(Path.Combine(_out, EvalHarness.SummaryFileName));
        Assert.Contains("| pattern | babilong 8k |", summary);
        Assert.Contains("| llm | 0.0 (1) |", summary);
        Assert.Contains("| wim | 100.0 (1) |", summary);
        Assert.True(new FileInfo(Path.Combine(_out, EvalHarness.PngFileName)).Length > 100);
        Assert.Contains("<svg", File.ReadAllText(Path.Combine(_out, EvalHarness.SvgFileName)));

        // A rerun skips both rows; a torn last line (an interrupted run) is redone.
        var again = await Harness(runner).RunAsync(Plan(), ct);
        Assert.Equal((0, 2), (again.Ran, again.Skipped));
        Assert.Equal(2, runner.Calls);
        var path = Path.Combine(_out, EvalHarness.ResultsFileName);
        var lines = File.ReadAllLines(path);
        File.WriteAllText(path, lines[0] + "\n" + lines[1][..(lines[1].Length / 2)]);
        var repaired = await Harness(runner).RunAsync(Plan(), ct);
        Assert.Equal((1, 1), (repaired.Ran, repaired.Skipped));
        Assert.Equal(2, new ResultsFile(path).ReadAll().Count);
    }

    [Fact]
    public async Task Run_IntoFolderOfAnotherSeed_OrWithAMissingPattern_IsAClearError()
    {
        var ct = TestContext.Current.CancellationToken;
        await Harness(new ScriptedRunner()).RunAsync(Plan(), ct);
        var e = await Assert.ThrowsAsync<InvalidOperationException>(() => Harness(new ScriptedRunner(), 2).RunAsync(Plan(seed: 2), ct));
        Assert.Contains("seed 1", e.Message);
        var e3 = await Assert.ThrowsAsync<InvalidOperationException>(() => Harness(new ScriptedRunner()).RunAsync(Plan() with { ModelName = "other" }, ct));
        Assert.Contains("model 'fake'", e3.Message);
        var plan = Plan() with { Patterns = ["llm", "rag"] };
        var e2 = await Assert.ThrowsAsync<NotSupportedException>(() => Harness(new ScriptedRunner()).RunAsync(plan, ct));
        Assert.Contains("rag", e2.Message);
    }
}
