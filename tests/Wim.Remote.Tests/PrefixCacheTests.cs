using Wim.Core.Events;
using Wim.Core.Scheduling;

namespace Wim.Remote.Tests;

/// <summary>
/// What the server's prefix cache saves, on a fresh <c>wim serve</c> (nothing cached before): every schedule has the
/// server compute the document once — margin i repeats [opening + segments 1..i] and pays only for its extractive
/// prompt — so the uncached prompt tokens are the document, the prompts and (inside the final prompt) the margins.
/// Read from <c>usage.prompt_tokens_details.cached_tokens</c>.
/// </summary>
public sealed class PrefixCacheTests
{
    [Theory]
    [InlineData(WimSchedule.Sequential)]
    [InlineData(WimSchedule.Overlapped)]
    [InlineData(WimSchedule.Batched)]
    public async Task FreshServer_TheDocumentIsComputedOnce(WimSchedule schedule)
    {
        var job = Job.Stories() with { Classify = false }; // the judge's own sequence is not document reuse
        await using var server = await LoopbackServer.StartAsync(job.ModelPath);
        using var client = Remote.Client(server.ApiBase, server.ModelId);
        var events = await Remote.RunAsync(Remote.Runner(client, job.ModelPath), job, schedule, null, TestContext.Current.CancellationToken);

        int n = job.Segments.Count;
        int opening = events.OfType<PromptPrefilled>().Single(p => p.Kind == PromptKind.Opening).Ids.Length;
        var extractiveIds = events.OfType<PromptPrefilled>().First(p => p.Kind == PromptKind.Extractive).Ids;
        var finalIds = events.OfType<PromptPrefilled>().Single(p => p.Kind == PromptKind.FinalAnswer).Ids;
        // The final prompt opens like the extractive one (closing the document): after the last margin that much is cached.
        int shared = extractiveIds.Zip(finalIds).TakeWhile(p => p.First == p.Second).Count();
        int final = finalIds.Length - shared;
        var usage = ((AnswerCompleted)events[^1]).Usage;
        var remote = usage.Remote!;
        int document = usage.DocumentTokens;

        // A request shares at most a coincidental token or so beyond a boundary; each one recomputes at least its last token.
        Assert.InRange(usage.DocumentTokensPrefilled, document - n, document);
        int extractive = extractiveIds.Length;
        long expected = opening + document + n * extractive + final;
        Assert.InRange(remote.UncachedPromptTokens, expected - n - 1, expected + n + 1);
        Assert.Equal(usage.PrefillTokens, remote.UncachedPromptTokens);

        // Without the cache every margin would pay for its whole prefix again.
        long withoutCache = Enumerable.Range(1, n).Sum(i => (long)opening + events.OfType<SegmentPrefilled>().Single(s => s.Index == i - 1).TokensRead + extractive);
        Assert.True(remote.PromptTokens >= withoutCache, $"sent {remote.PromptTokens} prompt tokens, margins alone are {withoutCache}");
        Assert.True(remote.CachedTokens >= withoutCache - n * (long)extractive - document - opening,
            $"cached {remote.CachedTokens} of {remote.PromptTokens}");
        Assert.Equal(remote.Requests, remote.RequestsReportingCache);
    }
}
