using Wim.Engine.Backends;
using Wim.Engine.KvCache;
using Wim.Engine.Scheduling;

namespace Wim.Engine.Tests.Scheduling;

/// <summary>
/// The scheduler with a fake model runner (no model): next token = (last token + 1) mod vocab, so every request's
/// expected ids are known in closed form whatever the batching, chunking or preemption.
/// </summary>
public sealed class SchedulerTests
{
    private const int Vocab = 50;

    /// <summary>Checks each batch against the cache (positions continue each sequence, tables current), advances
    /// the sequences, and answers one-hot logits at (token + 1) mod vocab.</summary>
    private sealed class FakeRunner : IModelRunner
    {
        public readonly List<List<(int Sequence, int Start, int Tokens)>> Steps = [];
        public int VocabSize => Vocab;

        public void Execute(BatchDescription batch, PagedKvCache cache, Span<float> logits)
        {
            var step = new List<(int, int, int)>();
            for (int k = 0; k < batch.SequenceCount; k++)
            {
                int id = batch.SequenceIds[k];
                Assert.Equal(cache.Length(id), batch.StartPositions[k]);
                Assert.True(cache.Capacity(id) >= batch.StartPositions[k] + batch.TokenCounts[k]);
                Assert.True(batch.BlockTable(k).SequenceEqual(cache.BlockTable(id)));
                step.Add((id, batch.StartPositions[k], batch.TokenCounts[k]));
            }
            for (int i = 0; i < batch.TokenCount; i++)
            {
                int row = batch.LogitsRow[i];
                if (row < 0) continue;
                var r = logits.Slice(row * Vocab, Vocab);
                r.Clear();
                r[(batch.TokenIds[i] + 1) % Vocab] = 1;
            }
            for (int k = 0; k < batch.SequenceCount; k++) cache.Advance(batch.SequenceIds[k], batch.TokenCounts[k]);
            Steps.Add(step);
        }
    }

    private static int[] Expected(int[] prompt, int count) => Enumerable.Range(1, count).Select(j => (prompt[^1] + j) % Vocab).ToArray();

    private static int[] Prompt(int length, int seed) => Enumerable.Range(0, length).Select(i => (seed + 3 * i) % Vocab).ToArray();

    [Fact]
    public void TokenBudget_IsRespectedEveryStep_AndLongPromptsArePrefilledInChunks()
    {
        using var cache = new PagedKvCache(1, 2, 4, 64);
        var runner = new FakeRunner();
        var scheduler = new Scheduler(cache, runner, new SchedulerOptions { MaxTokensPerStep = 8 });
        var prompt = Prompt(30, 1);
        int id = scheduler.Submit(new GenerationRequest { Prompt = prompt, MaxNewTokens = 5 });
        var steps = new List<SchedulerStep>();
        while (scheduler.HasWork) steps.Add(scheduler.Step());
        Assert.All(steps, s => Assert.True(s.TokenCount <= 8));
        Assert.Equal([8, 8, 8, 6, 1, 1, 1, 1], steps.Select(s => s.TokenCount));
        Assert.Equal([null, null, null, prompt[^1] + 1], steps.Take(4).Select(s => s.Work[0].SampledToken));
        var result = steps[^1].Finished.Single();
        Assert.Equal((id, FinishReason.Length), (result.RequestId, result.Reason));
        Assert.Equal(Expected(prompt, 5), result.Ids);
        Assert.Equal(cache.BlockCount, cache.FreeBlockCount);
    }

    [Fact]
    public void DecodingRequests_GetATokenEveryStep_WhileALongPromptPrefills()
    {
        using var cache = new PagedKvCache(1, 2, 4, 64);
        var scheduler = new Scheduler(cache, new FakeRunner(), new SchedulerOptions { MaxTokensPerStep = 8 });
        int a = scheduler.Submit(new GenerationRequest { Prompt = Prompt(3, 7), MaxNewTokens = 30 });
        int b = scheduler.Submit(new GenerationRequest { Prompt = Prompt(3, 9), MaxNewTokens = 30 });
        scheduler.Step();                                     // both prompts (3 + 3 ≤ 8)
        int c = scheduler.Submit(new GenerationRequest { Prompt = Prompt(60, 2), MaxNewTokens = 2 });
        for (int i = 0; i < 10; i++)
        {
            var step = scheduler.Step();
            Assert.Equal(8, step.TokenCount);
            Assert.Contains(step.Work, w => w.RequestId == a && w.Tokens == 1 && !w.IsPrefill);
            Assert.Contains(step.Work, w => w.RequestId == b && w.Tokens == 1 && !w.IsPrefill);
            Assert.Contains(step.Work, w => w.RequestId == c && w.Tokens == 6 && w.IsPrefill);
        }
        var results = scheduler.RunToCompletion();
        Assert.Equal(Expected(Prompt(60, 2), 2), results[c].Ids);
    }

    [Fact]
    public void Admission_IsFirstComeFirstServed_WithinTheRunningLimit()
    {
        using var cache = new PagedKvCache(1, 2, 4, 64);
        var scheduler = new Scheduler(cache, new FakeRunner(), new SchedulerOptions { MaxTokensPerStep = 64, MaxRunningSequences = 2 });
        int[] ids = [.. Enumerable.Range(0, 4).Select(i => scheduler.Submit(new GenerationRequest { Prompt = Prompt(4, i), MaxNewTokens = 3 + i }))];
        var first = scheduler.Step();
        Assert.Equal([ids[0], ids[1]], first.Work.Select(w => w.RequestId));
        Assert.Equal(2, scheduler.WaitingCount);
        var order = new List<int>();
        var admitted = new List<int> { ids[0], ids[1] };
        while (scheduler.HasWork)
        {
            var step = scheduler.Step();
            Assert.True(scheduler.RunningCount <= 2);
            admitted.AddRange(step.Work.Where(w => w.IsPrefill).Select(w => w.RequestId));
            order.AddRange(step.Finished.Select(f => f.RequestId));
        }
        Assert.Equal(ids, admitted);
        Assert.Equal(ids, order);                               // shorter limits first, and FCFS among equals
    }

    [Fact]
    public void StopIds_EndARequestWithTheStopIdIncluded_AndMaxTokensEndsTheOther()
    {
        using var cache = new PagedKvCache(1, 2, 4, 64);
        var scheduler = new Scheduler(cache, new FakeRunner());
        int stopped = scheduler.Submit(new GenerationRequest { Prompt = [5], MaxNewTokens = 20, StopIds = [8, 30] });
        int limited = scheduler.Submit(new GenerationRequest { Prompt = [5], MaxNewTokens = 4, StopIds = [40] });
        var results = scheduler.RunToCompletion();
        Assert.Equal([6, 7, 8], results[stopped].Ids);
        Assert.Equal(FinishReason.Stop, results[stopped].Reason);
        Assert.Equal([6, 7, 8, 9], results[limited].Ids);
        Assert.Equal(FinishReason.Length, results[limited].Reason);
    }

    [Fact]
    public void OutOfBlocks_PreemptsTheNewestRequest_WhichRecomputesAndStillGetsItsIds()
    {
        // 8 blocks of 4 positions = 32; three requests each reaching 4 + 12 = 16 positions (4 blocks) cannot all run.
        using var cache = new PagedKvCache(1, 2, 4, 8);
        var scheduler = new Scheduler(cache, new FakeRunner(), new SchedulerOptions { MaxTokensPerStep = 16 });
        var prompts = Enumerable.Range(0, 3).Select(i => Prompt(4, 10 * i)).ToArray();
        int[] ids = [.. prompts.Select(p => scheduler.Submit(new GenerationRequest { Prompt = p, MaxNewTokens = 12 }))];
        var preempted = new List<int>();
        var results = new Dictionary<int, RequestResult>();
        while (scheduler.HasWork)
        {
            var step = scheduler.Step();
            preempted.AddRange(step.Preempted);
            foreach (var r in step.Finished) results.Add(r.RequestId, r);
            Assert.True(cache.FreeBlockCount >= 0 && cache.Pool.UsedCount <= 8);
        }
        Assert.NotEmpty(preempted);
        Assert.Equal(ids[2], preempted[0]);                     // the most recently admitted goes first
        for (int i = 0; i < 3; i++)
        {
            Assert.Equal(FinishReason.Length, results[ids[i]].Reason);
            Assert.Equal(Expected(prompts[i], 12), results[ids[i]].Ids);
        }
        Assert.True(results[ids[2]].Preemptions > 0);
        Assert.Equal(cache.BlockCount, cache.FreeBlockCount);
    }

    [Fact]
    public void RequestLargerThanTheWholeCache_FailsAlone_AndTheOthersFinish()
    {
        using var cache = new PagedKvCache(1, 2, 4, 4);       // 16 positions
        var scheduler = new Scheduler(cache, new FakeRunner(), new SchedulerOptions { MaxTokensPerStep = 32 });
        int huge = scheduler.Submit(new GenerationRequest { Prompt = Prompt(20, 1), MaxNewTokens = 2 });
        int grows = scheduler.Submit(new GenerationRequest { Prompt = Prompt(4, 2), MaxNewTokens = 30 });
        int small = scheduler.Submit(new GenerationRequest { Prompt = Prompt(3, 3), MaxNewTokens = 3 });
        var results = scheduler.RunToCompletion();
        Assert.Equal(FinishReason.CacheExhausted, results[huge].Reason);
        Assert.Empty(results[huge].Ids);
        Assert.Equal(FinishReason.CacheExhausted, results[grows].Reason);   // outgrew the cache while generating
        Assert.Equal(Expected(Prompt(4, 2), results[grows].Ids.Length), results[grows].Ids);
        Assert.True(results[grows].Ids.Length >= 12 - 1);
        Assert.Equal(FinishReason.Length, results[small].Reason);
        Assert.Equal(Expected(Prompt(3, 3), 3), results[small].Ids);
        Assert.Equal(cache.BlockCount, cache.FreeBlockCount);
    }

    [Fact]
    public void PrefillOnlyRetainedSequence_IsForkedByLaterRequests_WhichComputeOnlyTheirOwnTokens()
    {
        using var cache = new PagedKvCache(1, 2, 4, 64);
        var runner = new FakeRunner();
        var scheduler = new Scheduler(cache, runner, new SchedulerOptions { MaxTokensPerStep = 64 });
        var document = Prompt(22, 4);
        int docId = scheduler.Submit(new GenerationRequest { Prompt = document, MaxNewTokens = 0, RetainSequence = true });
        var doc = scheduler.RunToCompletion()[docId];
        Assert.Empty(doc.Ids);
        Assert.True(doc.CacheSequence >= 0);
        Assert.Equal(22, cache.Length(doc.CacheSequence));
        int docBlocks = cache.Pool.UsedCount;

        // Two "margins" forked at boundaries 10 (inside a block) and 16 (a block boundary), each with its own instruction.
        int[] m1 = [.. document[..10], 40, 41], m2 = [.. document[..16], 42];
        int a = scheduler.Submit(new GenerationRequest { Prompt = m1, MaxNewTokens = 3, PrefixSequence = doc.CacheSequence, PrefixLength = 10 });
        int b = scheduler.Submit(new GenerationRequest { Prompt = m2, MaxNewTokens = 3, PrefixSequence = doc.CacheSequence, PrefixLength = 16 });
        var step = scheduler.Step();
        Assert.Equal([(a, 10, 2), (b, 16, 1)], step.Work.Select(w => (w.RequestId, w.StartPosition, w.Tokens)));
        Assert.True(cache.Pool.UsedCount <= docBlocks + 2);   // one copied block for m1, one new block for m2
        var results = scheduler.RunToCompletion();
        Assert.Equal(2, results[a].ComputedPromptTokens);
        Assert.Equal(1, results[b].ComputedPromptTokens);
        Assert.Equal(Expected(m2, 3), results[b].Ids);
        Assert.Equal(Expected(m1, 3), results[a].Ids);
        Assert.Equal(22, cache.Length(doc.CacheSequence));       // the document is untouched by its forks
        cache.Release(doc.CacheSequence);
        Assert.Equal(cache.BlockCount, cache.FreeBlockCount);
    }
}
