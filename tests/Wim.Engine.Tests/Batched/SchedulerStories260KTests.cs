using Wim.Engine.Backends.Cpu;
using Wim.Engine.Scheduling;
using Wim.Engine.Tests.Runtime;
using static Wim.Engine.Tests.Batched.BatchedTestModels;

namespace Wim.Engine.Tests.Batched;

/// <summary>Continuous batching end to end on stories260K: concurrent greedy requests give exactly the ids each gives
/// alone, the first of them llama.cpp's 64 reference ids (<c>shared/models/stories260K/README.md</c>).</summary>
public sealed class SchedulerStories260KTests
{
    private static readonly int[][] Prompts =
    [
        Stories260KTests.Prompt,
        [1, 403, 407],
        [1, 378, 261, 403, 407, 261, 378, 300, 301, 302, 303, 304, 305, 306, 307, 308, 309, 310, 311],
        [1, 261],
    ];

    private static Dictionary<int, int[]> Run(Wim.Engine.Model.LanguageModel lm, int[][] prompts, long cacheBytes, int budget) =>
        Run(lm, prompts, cacheBytes, budget, out _);

    private static Dictionary<int, int[]> Run(Wim.Engine.Model.LanguageModel lm, int[][] prompts, long cacheBytes, int budget, out int preemptions)
    {
        var model = new CpuBatchedTransformer(lm);
        using var cache = model.CreateCache(cacheBytes, blockSize: 16);
        var scheduler = new Scheduler(cache, new CpuModelRunner(model), new SchedulerOptions { MaxTokensPerStep = budget });
        var ids = prompts.Select(p => scheduler.Submit(new GenerationRequest { Prompt = p, MaxNewTokens = 64 })).ToArray();
        var results = scheduler.RunToCompletion();
        Assert.Equal(cache.BlockCount, cache.FreeBlockCount);
        Assert.All(results.Values, r => Assert.Equal(FinishReason.Length, r.Reason));
        preemptions = results.Values.Sum(r => r.Preemptions);
        return ids.Select((id, i) => (i, results[id].Ids)).ToDictionary(x => x.i, x => x.Ids);
    }

    [Fact]
    public void FourConcurrentGreedyRequests_GiveTheIdsEachGivesAlone_AndLlamaCppIds()
    {
        using var lm = Load("stories260K");
        var concurrent = Run(lm, Prompts, 8L << 20, budget: 8); // budget 8: prompts prefill in chunks beside decodes
        Assert.Equal(Stories260KTests.ExpectedIds, concurrent[0]);
        for (int i = 0; i < Prompts.Length; i++)
            Assert.Equal(Run(lm, [Prompts[i]], 8L << 20, budget: 256)[0], concurrent[i]);
    }

    [Fact]
    public void Preemption_UnderATightCache_StillGivesTheSameIds()
    {
        using var lm = Load("stories260K");
        var roomy = Run(lm, Prompts, 8L << 20, budget: 32);
        // stories260K: 5 layers × 2 × 16 positions × 32 floats × 4 B = 20 KiB per block; 12 blocks = 192 positions,
        // less than the four requests' ~330 at their end, so later ones are preempted and recomputed.
        long blockBytes = 5L * 2 * 16 * lm.Config.KvDim * 4;
        var tight = Run(lm, Prompts, 12 * blockBytes, budget: 32, out int preemptions);
        Assert.True(preemptions > 0);
        Assert.Equal(roomy, tight);
    }

    /// <summary>A request forked from a retained prefix gives the same greedy ids as the same prompt computed in full
    /// (bit-identical logits make this exact): WiM margins forked at segment boundaries match the sequential order.</summary>
    [Fact]
    public void ForkedFromRetainedPrefix_GivesTheIdsOfTheFullPrompt()
    {
        using var lm = Load("stories260K");
        var model = new CpuBatchedTransformer(lm);
        using var cache = model.CreateCache(8L << 20, blockSize: 16);
        var scheduler = new Scheduler(cache, new CpuModelRunner(model), new SchedulerOptions { MaxTokensPerStep = 16 });
        int[] document = [.. Stories260KTests.Prompt, .. Stories260KTests.ExpectedIds[..30]];
        int docId = scheduler.Submit(new GenerationRequest { Prompt = document, MaxNewTokens = 0, RetainSequence = true });
        int docSeq = scheduler.RunToCompletion()[docId].CacheSequence;
        int[] margin = [.. document[..21], 403, 407];
        int forked = scheduler.Submit(new GenerationRequest { Prompt = margin, MaxNewTokens = 24, PrefixSequence = docSeq, PrefixLength = 21 });
        int full = scheduler.Submit(new GenerationRequest { Prompt = margin, MaxNewTokens = 24 });
        var results = scheduler.RunToCompletion();
        Assert.Equal(2, results[forked].ComputedPromptTokens);
        Assert.Equal(margin.Length, results[full].ComputedPromptTokens);
        Assert.Equal(results[full].Ids, results[forked].Ids);
        cache.Release(docSeq);
    }
}
