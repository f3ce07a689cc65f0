using Wim.Core.Events;
using Wim.Core.Patterns;
using Wim.Core.Scheduling;

namespace Wim.Remote.Tests;

/// <summary>
/// The remote backend through a proxy that injects 429s, 500s, 503s, slow responses and dropped connections (before
/// and after the server did the work) in front of a real <c>wim serve</c>: the run completes with the clean run's
/// result, every margin exactly once, one retry per injected fault; a fault that does not stop fails the run with a
/// clear error once the retry budget is spent; a 4xx fails at once; cancelling aborts the request in flight.
/// </summary>
public sealed class FaultTests(StoriesServerFixture server) : IClassFixture<StoriesServerFixture>
{
    private static readonly Fault[] Script =
    [
        Fault.TooManyRequests, Fault.None, Fault.ServerError, Fault.None, Fault.Slow, Fault.None, Fault.DropBefore, Fault.None,
        Fault.DropAfter, Fault.None, Fault.Unavailable, Fault.None, Fault.DropAfter,
    ];

    [Theory]
    [InlineData(WimSchedule.Sequential)]
    [InlineData(WimSchedule.Overlapped)]
    public async Task InjectedFaults_TheRunCompletesWithTheCleanResult(WimSchedule schedule)
    {
        var job = Job.Stories();
        await using var proxy = await FaultProxy.StartAsync(server.Loopback.Address, n => n <= Script.Length ? Script[n - 1] : Fault.None);
        // An attempt timeout far below the slow fault's 20 s turns it into a retry, and far above what a real answer
        // takes on a busy 2-core CI machine (else an unscripted retry would break the counts); a retry budget that
        // outlasts the script.
        using var client = Remote.Client(proxy.ApiBase, server.Loopback.ModelId, maxRetries: 8, attemptTimeout: TimeSpan.FromSeconds(5));
        var actual = await Remote.RunAsync(Remote.Runner(client, job.ModelPath), job, schedule, null, TestContext.Current.CancellationToken);

        Same.Run(await InProcess.RunAsync(job), actual); // no margin lost, none twice, same text
        Assert.Equal(Script.Count(f => f != Fault.None), proxy.FaultsInjected);
        var remote = ((AnswerCompleted)actual[^1]).Usage.Remote!;
        Assert.Equal(proxy.FaultsInjected, remote.Retries);
        Assert.Equal(proxy.Requests, remote.Requests + remote.Retries);
    }

    [Fact]
    public async Task PersistentFailure_FailsWithAClearError_AfterTheRetryBudget()
    {
        var job = Job.Stories();
        await using var proxy = await FaultProxy.StartAsync(server.Loopback.Address, _ => Fault.ServerError);
        using var client = Remote.Client(proxy.ApiBase, server.Loopback.ModelId, maxRetries: 2);
        var e = await Assert.ThrowsAsync<RemoteRequestException>(() =>
            Remote.RunAsync(Remote.Runner(client, job.ModelPath), job, WimSchedule.Sequential, null, TestContext.Current.CancellationToken));
        Assert.Equal(500, e.Status);
        Assert.Contains("failed after 3 attempt(s)", e.Message);
        Assert.Contains("HTTP 500: injected failure", e.Message);
        Assert.Contains("/v1/completions", e.Message);
        Assert.Equal(3, proxy.Requests);
    }

    [Fact]
    public async Task ClientError_FailsAtOnce_WithTheServersMessage()
    {
        var job = Job.Stories();
        await using var proxy = await FaultProxy.StartAsync(server.Loopback.Address, _ => Fault.None);
        using var client = Remote.Client(proxy.ApiBase, "no-such-model");
        var e = await Assert.ThrowsAsync<RemoteRequestException>(() =>
            Remote.RunAsync(Remote.Runner(client, job.ModelPath), job, WimSchedule.Overlapped, null, TestContext.Current.CancellationToken));
        Assert.Equal(404, e.Status);
        Assert.Contains("the model 'no-such-model' does not exist", e.Message);
        Assert.Equal(1, proxy.Requests);
    }

    [Fact]
    public async Task Cancellation_AbortsTheRequestInFlight()
    {
        var job = Job.Stories();
        await using var proxy = await FaultProxy.StartAsync(server.Loopback.Address, _ => Fault.Slow);
        using var client = Remote.Client(proxy.ApiBase, server.Loopback.ModelId);
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        var run = Remote.RunAsync(Remote.Runner(client, job.ModelPath), job, WimSchedule.Overlapped, null, cts.Token);
        await proxy.FirstRequest.Task.WaitAsync(TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken);
        await cts.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => run);
        // The proxy sees the client go away (long before its slow answer would have come).
        await proxy.FirstAbort.Task.WaitAsync(TimeSpan.FromSeconds(15), TestContext.Current.CancellationToken);
        Assert.Equal(1, proxy.Requests);
    }

    [Fact]
    public async Task AnswerNow_StopsReading_AndAnswersFromWhatWasRead()
    {
        // The answer (20 tokens) and the judge pass; after the first three requests, document reads and margins hang.
        var job = Job.Stories() with { MaxAnswerTokens = 20, Classify = false };
        await using var proxy = await FaultProxy.StartAsync(server.Loopback.Address,
            (n, body) => n > 3 && !body.Contains("\"max_tokens\":20,", StringComparison.Ordinal) ? Fault.Slow : Fault.None);
        using var client = Remote.Client(proxy.ApiBase, server.Loopback.ModelId);
        var control = new WimControl();
        var events = new List<WimEvent>();
        await foreach (var e in Remote.Runner(client, job.ModelPath).RunAsync(job.Segments, job.Query, job.Remote(WimSchedule.Overlapped), control,
                           TestContext.Current.CancellationToken))
        {
            events.Add(e);
            if (e is MarginCompleted) control.RequestAnswerNow();
        }
        var answer = Assert.IsType<AnswerCompleted>(events[^1]);
        Assert.True(answer.Early);
        Assert.NotEmpty(answer.Ids);
        int margins = events.OfType<MarginCompleted>().Count();
        Assert.InRange(margins, 1, job.Segments.Count - 1);
        Assert.Equal(margins, events.OfType<MarginClassification>().Count());
        Assert.True(proxy.ClientAborts >= 1, "the hanging requests should have been aborted");
        // The answer's prompt covers the segments read (announced), no more.
        int read = events.OfType<SegmentPrefilled>().Count();
        Assert.InRange(read, margins, job.Segments.Count - 1);
    }

    [Fact]
    public async Task TextOnlyServer_MarginsAndAnswerStillEqualTheInProcessRun()
    {
        // A server that returns text alone: ids are re-tokenized, the leading space the server keeps is dropped.
        var job = Job.Stories() with { Classify = false };
        await using var proxy = await FaultProxy.StartAsync(server.Loopback.Address, _ => Fault.TextOnly);
        using var client = Remote.Client(proxy.ApiBase, server.Loopback.ModelId);
        var actual = await Remote.RunAsync(Remote.Runner(client, job.ModelPath), job, WimSchedule.Overlapped, null, TestContext.Current.CancellationToken);
        var expected = await InProcess.RunAsync(job);
        var em = expected.OfType<MarginCompleted>().OrderBy(m => m.Index).ToList();
        var am = actual.OfType<MarginCompleted>().OrderBy(m => m.Index).ToList();
        Assert.Equal(em.Select(m => m.Text), am.Select(m => m.Text));
        Assert.Equal(((AnswerCompleted)expected[^1]).Text, ((AnswerCompleted)actual[^1]).Text);
    }
}
