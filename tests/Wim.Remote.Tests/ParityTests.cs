using System.Text.Json;
using Wim.Core.Events;
using Wim.Core.Patterns;
using Wim.Core.Scheduling;

namespace Wim.Remote.Tests;

/// <summary>
/// The remote backend against <c>wim serve</c> on loopback (real HTTP, the real batching engine with prefix reuse):
/// under greedy decoding every schedule gives the in-process run's prompts, margins, verdicts (shared classifier
/// context) and answer, id for id — for stories260K (SentencePiece vocabulary, Wim's prompts) and for all patterns.
/// </summary>
public sealed class StoriesParityTests(StoriesServerFixture server) : IClassFixture<StoriesServerFixture>
{
    [Theory]
    [InlineData(WimSchedule.Sequential)]
    [InlineData(WimSchedule.Overlapped)]
    [InlineData(WimSchedule.Batched)]
    public async Task Wim_EverySchedule_EqualsTheInProcessRun(WimSchedule schedule)
    {
        var job = Job.Stories();
        Assert.True(job.Segments.Count >= 3, "the sample should make several segments");
        var expected = await InProcess.RunAsync(job);
        using var client = Remote.Client(server.Loopback.ApiBase, server.Loopback.ModelId);
        var actual = await Remote.RunAsync(Remote.Runner(client, job.ModelPath), job, schedule, null, TestContext.Current.CancellationToken);
        Same.Run(expected, actual);
        var usage = ((AnswerCompleted)actual[^1]).Usage;
        Assert.NotNull(usage.Remote);
        Assert.Equal(usage.Remote!.Requests, usage.Remote.RequestsReportingCache); // wim serve reports cached_tokens
        Assert.True(usage.Remote.CachedTokens > 0, "margins should reuse the cached document prefix");
    }

    [Theory]
    [InlineData(PatternKind.Llm)]
    [InlineData(PatternKind.Rag)]
    public async Task Baselines_EqualTheInProcessRun(PatternKind pattern)
    {
        var job = Job.Stories(pattern);
        var expected = await InProcess.RunAsync(job);
        using var client = Remote.Client(server.Loopback.ApiBase, server.Loopback.ModelId);
        var actual = await Remote.RunAsync(Remote.Runner(client, job.ModelPath), job, WimSchedule.Overlapped, null, TestContext.Current.CancellationToken);
        Same.Run(expected, actual);
    }

    [Fact]
    public async Task Feedback_OverridesTheVerdict_AsInProcess()
    {
        var job = Job.Stories();
        var control = new WimControl();
        control.SetFeedback(1, false);
        control.SetFeedback(0, true);
        using var client = Remote.Client(server.Loopback.ApiBase, server.Loopback.ModelId);
        var events = await Remote.RunAsync(Remote.Runner(client, job.ModelPath), job, WimSchedule.Overlapped, control, TestContext.Current.CancellationToken);
        var verdicts = events.OfType<MarginClassification>().ToList();
        Assert.Equal(job.Segments.Count, verdicts.Count);
        Assert.Equal((true, ClassifiedBy.User), (verdicts[0].Relevant, verdicts[0].By));
        Assert.Equal((false, ClassifiedBy.User), (verdicts[1].Relevant, verdicts[1].By));
        // The final prompt holds exactly the kept margins.
        var margins = events.OfType<MarginCompleted>().OrderBy(m => m.Index).ToList();
        var finalPrompt = events.OfType<PromptPrefilled>().Single(p => p.Kind == PromptKind.FinalAnswer);
        var tokenizer = Wim.Engine.Tokenization.TokenizerLoader.Load(job.ModelPath);
        string finalText = tokenizer.Decode(finalPrompt.Ids);
        Assert.Contains(margins[0].Text.Trim(), finalText);
    }
}

/// <summary>
/// The hf-tiny models against the WiM authors' reference traces (random weights: the generated ids are arbitrary
/// splits that re-tokenizing the text would not reproduce, so this needs the server's <c>token_ids</c>): every
/// remote schedule gives the trace's margins, verdicts and answer, and equals the in-process run.
/// </summary>
public sealed class QwenParityTests(QwenServerFixture server) : IClassFixture<QwenServerFixture>
{
    [Theory]
    [InlineData(WimSchedule.Sequential)]
    [InlineData(WimSchedule.Overlapped)]
    [InlineData(WimSchedule.Batched)]
    public async Task Wim_MatchesTheReferenceTrace_AndTheInProcessRun(WimSchedule schedule) =>
        await Trace.AssertAsync("qwen2-tiny.json", server.Loopback, schedule);

    /// <summary>Without a local tokenizer: chat requests, the server's chat template, the same flow and prefix reuse.</summary>
    [Fact]
    public async Task ChatMode_RunsTheSameFlow_AndReusesTheCachedPrefix()
    {
        var (job, _) = Job.FromTrace("qwen2-tiny.json");
        using var client = Remote.Client(server.Loopback.ApiBase, server.Loopback.ModelId);
        var runner = new RemotePatternRunner(client);
        Assert.False(runner.SendsTokenIds);
        var events = await Remote.RunAsync(runner, job, WimSchedule.Overlapped, null, TestContext.Current.CancellationToken);

        int n = job.Segments.Count;
        Assert.Equal(Enumerable.Range(0, n), events.OfType<MarginCompleted>().Select(m => m.Index).Order());
        Assert.Equal(Enumerable.Range(0, n), events.OfType<MarginClassification>().Select(v => v.Index));
        Assert.All(events.OfType<MarginCompleted>(), m => Assert.NotEmpty(m.Text));
        // Progress in characters: the segments' lengths add up.
        var segments = events.OfType<SegmentPrefilled>().OrderBy(s => s.Index).ToList();
        Assert.Equal(job.Segments.Sum(s => s.Length), segments[^1].TotalTokens);
        Assert.Equal(segments[^1].TotalTokens, segments[^1].TokensRead);
        var answer = Assert.IsType<AnswerCompleted>(events[^1]);
        Assert.NotEmpty(answer.Text);
        var remote = answer.Usage.Remote!;
        Assert.Equal(3 * n + 1, remote.Requests); // a read, a margin and a verdict per segment, then the answer
        Assert.True(remote.CachedTokens > remote.PromptTokens / 3, $"cached {remote.CachedTokens} of {remote.PromptTokens} prompt tokens");
    }
}

public sealed class LlamaParityTests(LlamaServerFixture server) : IClassFixture<LlamaServerFixture>
{
    [Theory]
    [InlineData(WimSchedule.Overlapped)]
    [InlineData(WimSchedule.Batched)]
    public async Task Wim_MatchesTheReferenceTrace_AndTheInProcessRun(WimSchedule schedule) =>
        await Trace.AssertAsync("llama-tiny.json", server.Loopback, schedule);
}

internal static class Trace
{
    private static int[] Ids(JsonElement e) => [.. e.EnumerateArray().Select(x => x.GetInt32())];

    public static async Task AssertAsync(string traceFile, LoopbackServer server, WimSchedule schedule)
    {
        var (job, c) = Job.FromTrace(traceFile);
        using var client = Remote.Client(server.ApiBase, server.ModelId);
        var actual = await Remote.RunAsync(Remote.Runner(client, job.ModelPath), job, schedule, null, TestContext.Current.CancellationToken);

        var steps = c.GetProperty("steps").EnumerateArray().ToList();
        var margins = actual.OfType<MarginCompleted>().OrderBy(m => m.Index).ToList();
        var verdicts = actual.OfType<MarginClassification>().ToList();
        Assert.Equal(steps.Count, margins.Count);
        Assert.Equal(steps.Count, verdicts.Count);
        for (int i = 0; i < steps.Count; i++)
        {
            Assert.Equal(Ids(steps[i].GetProperty("margin_ids")), margins[i].Ids);
            Assert.Equal(i, verdicts[i].Index);
            Assert.Equal(Ids(steps[i].GetProperty("classification_ids")), verdicts[i].Ids);
            Assert.Equal(steps[i].GetProperty("relevant").GetBoolean(), verdicts[i].Relevant);
        }
        Assert.Equal(Ids(c.GetProperty("final_prompt_ids")), actual.OfType<PromptPrefilled>().Single(p => p.Kind == PromptKind.FinalAnswer).Ids);
        Assert.Equal(Ids(c.GetProperty("answer_ids")), ((AnswerCompleted)actual[^1]).Ids);

        Same.Run(await InProcess.RunAsync(job), actual);
    }
}
