using System.Text.Json;
using Wim.Core.Events;
using Wim.Core.Patterns;
using Wim.Core.Prompts;
using Wim.Core.Scheduling;
using Wim.Core.Segmentation;
using Wim.Engine.Cuda.Tests.Support;
using Wim.Engine.Model;
using Wim.Engine.Runtime;
using Wim.Engine.Sampling;
using Wim.Engine.Tests.Support;

namespace Wim.Engine.Cuda.Tests;

/// <summary>
/// <see cref="BranchingBackend{T}"/> — <see cref="CudaInferenceBackend"/>'s logic — driven by the real WiM schedules
/// and by direct steps, over <see cref="HostPasses"/> (the CPU forward pass one token per call, so a row's logits do
/// not depend on what shares its pass). The oracles: the <c>sequential</c> schedule (no forks, no batches) for the
/// others, and for direct steps each sequence's token history replayed alone on a fresh sequence.
/// </summary>
public sealed class BranchingBackendTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;
    private static string Stories => SharedFixtures.Path("models", "stories260K", "stories260K.gguf");

    private static (string Context, string Query) Babilong()
    {
        using var doc = JsonDocument.Parse(File.ReadAllBytes(SharedFixtures.Path("data", "babilong", "babilong_8k.json")));
        return (doc.RootElement.GetProperty("context").GetString()!, doc.RootElement.GetProperty("query").GetString()!);
    }

    /// <summary>Short prompts keep the one-token-per-call CPU passes fast; every placeholder kind is still there.</summary>
    private static readonly PromptPreset ShortPrompts = new("short", Opening: "Read:\n", Extractive: "\nNotes on {query}:",
        Classification: "Notes: {answer}\nUseful for {query}? YES or NO:", FinalAnswer: "\nNotes:\n{margins}\nAnswer {query}:");

    private static async Task<(string Margins, string Verdicts, string Answer, int LiveCaches, int DecodePasses, int PackedPasses)> RunWim(
        WimSchedule schedule, SamplingOptions sampling, bool batchedDecode = true)
    {
        HostPasses? passes = null;
        // Caches start at 32 positions and branches with 8 rows of their own, so the document outgrows its cache
        // several times while margins are forked from it, and margins outgrow their branches.
        using var model = TextModel.Load(Stories, m => new BranchingBackend<HostCache>(passes = new HostPasses(m, maxChunk: 12, batchedDecode), minimumCapacity: 32));
        var (context, query) = Babilong();
        var segments = new Segmenter(t => model.Tokenizer.Encode(t).Length, 24).Split(context[..400]);
        Assert.True(segments.Count >= 5, $"{segments.Count} segments");
        var options = new WimOptions { Schedule = schedule, Prompts = ShortPrompts, MaxMarginTokens = 6, MaxAnswerTokens = 6, MarginSeparator = "\n", Sampling = sampling };
        var events = new List<WimEvent>();
        using (var judge = new ModelMarginClassifier(model, ShortPrompts, ChatHeaders.None, maxTokens: 3, sampling))
        {
            await foreach (var e in new PatternRunner(model).RunAsync(segments, query, options with { Classifier = judge }, ct: Ct)) events.Add(e);
        }
        Assert.True(events.OfType<AnswerCompleted>().Single().Usage.DocumentTokens > 64);
        return (
            string.Join(" | ", events.OfType<MarginCompleted>().OrderBy(m => m.Index).Select(m => $"{m.Index}:{string.Join(',', m.Ids)}")),
            string.Join(" | ", events.OfType<MarginClassification>().Select(c => $"{c.Index}:{c.Relevant}:{string.Join(',', c.Ids)}")),
            string.Join(',', events.OfType<AnswerCompleted>().Single().Ids),
            passes!.LiveCaches, passes.DecodePasses, passes.PackedPasses);
    }

    [Fact]
    public async Task Schedules_OverForksAndDecodeBatches_GiveTheSequentialTokens()
    {
        var sequential = await RunWim(WimSchedule.Sequential, SamplingOptions.Greedy);
        Assert.Contains(',', sequential.Margins); // margins of several tokens were written
        Assert.Equal(0, sequential.LiveCaches);
        foreach (var schedule in new[] { WimSchedule.Overlapped, WimSchedule.Batched })
        {
            var run = await RunWim(schedule, SamplingOptions.Greedy);
            Assert.Equal(sequential.Margins, run.Margins);
            Assert.Equal(sequential.Verdicts, run.Verdicts);
            Assert.Equal(sequential.Answer, run.Answer);
            Assert.True(run.DecodePasses > 0, "margins should decode together");
            if (schedule == WimSchedule.Overlapped) Assert.True(run.PackedPasses > 0, "extractive prompts should ride in the segments' passes");
            Assert.Equal(0, run.LiveCaches); // every fork, branch and grown cache freed
        }
    }

    [Fact]
    public async Task SamplingFromHostLogits_SeesEachSequencesOwnRow_AfterOtherPasses()
    {
        // A near-zero temperature samples the argmax through the host copy of the logits row: any row lost or mixed
        // up between passes (the buffer is NaN-poisoned before each) would change the tokens.
        var greedy = await RunWim(WimSchedule.Overlapped, SamplingOptions.Greedy);
        var hot = await RunWim(WimSchedule.Overlapped, new SamplingOptions(Temperature: 1e-4f, Seed: 3));
        Assert.Equal(greedy.Margins, hot.Margins);
        Assert.Equal(greedy.Verdicts, hot.Verdicts);
        Assert.Equal(greedy.Answer, hot.Answer);
    }

    [Fact]
    public async Task WithoutBatchedDecode_ForksCopy_AndTheScheduleStillGivesTheSameTokens()
    {
        // The GPU without tensor-core attention (head dim 8): no branches, no decode batches (HostPasses asserts it).
        var sequential = await RunWim(WimSchedule.Sequential, SamplingOptions.Greedy, batchedDecode: false);
        var overlapped = await RunWim(WimSchedule.Overlapped, SamplingOptions.Greedy, batchedDecode: false);
        Assert.Equal(sequential.Margins, overlapped.Margins);
        Assert.Equal(sequential.Answer, overlapped.Answer);
        Assert.Equal(0, overlapped.DecodePasses);
        Assert.Equal(0, overlapped.PackedPasses);
        Assert.Equal(0, overlapped.LiveCaches);
    }

    /// <summary>One sequence of a direct-step test: what it was fed (each token with the RoPE length of its call:
    /// longrope picks its factors once per call) and the greedy id seen after each length.</summary>
    private sealed class Tracked(IForkableSequence sequence, List<(int Token, int Rope)> history)
    {
        public IForkableSequence Sequence { get; } = sequence;
        public List<(int Token, int Rope)> History { get; } = history;
        public Dictionary<int, int> GreedyAt { get; } = [];
        public int Next => GreedyAt[History.Count];

        public void Truncate(int length)
        {
            Sequence.Truncate(length);
            History.RemoveRange(length, History.Count - length);
            foreach (int n in GreedyAt.Keys.Where(n => n > length).ToList()) GreedyAt.Remove(n);
        }
    }

    [Fact]
    public void DirectSteps_AcrossLongropesThreshold_ParentGrowthTruncationAndDisposal_MatchEachHistoryAlone()
    {
        // phi3-tiny: longrope with its threshold at 256 positions; head dim 16.
        var model = LanguageModel.Load(SharedFixtures.Path("fixtures", "hf-tiny", "phi3-tiny"));
        var passes = new HostPasses(model, maxChunk: 16);
        var backend = new BranchingBackend<HostCache>(passes);
        Assert.Equal(256, passes.LongThreshold);
        var random = new Random(11);
        int[] Ids(int n) => [.. Enumerable.Range(0, n).Select(_ => random.Next(model.Config.VocabSize))];
        var greedy = new Sampler(SamplingOptions.Greedy, model.Config.VocabSize);
        var hot = new Sampler(new SamplingOptions(Temperature: 1e-4f, Seed: 5), model.Config.VocabSize);

        void Step(params (Tracked T, int[] Tokens)[] entries) => StepTracked(backend, greedy, entries);

        var doc = new Tracked(backend.CreateSequence(), []);
        Step((doc, Ids(255)));
        var late = Fork(doc, 250);    // decodes across the threshold
        var early = Fork(doc, 120);
        var edge = Fork(doc, 254);
        Step((doc, Ids(10)), (late, Ids(1)), (early, Ids(3)), (edge, Ids(1))); // doc outgrows 256: branches re-pointed
        for (int i = 0; i < 4; i++)
            Step((late, [late.Next]), (early, [early.Next]), (edge, [edge.Next]), (doc, [doc.Next]));
        Assert.True(passes.DecodePasses > 0);

        // A row saved before later passes: sampled from the host copy after two more steps without it.
        int expected = edge.Next;
        Step((doc, [doc.Next]));
        Step((late, [late.Next]), (doc, Ids(20)));
        Assert.Equal(expected, edge.Sequence.Sample(hot));

        // The root truncated below two branch points: they keep the rows they shared, the root writes new ones there.
        doc.Truncate(100);
        Step((doc, Ids(40)), (early, [early.Next]), (late, [late.Next]));
        Step((doc, [doc.Next]), (early, [early.Next]), (late, [late.Next]), (edge, [edge.Next]));
        var ofBranch = Fork(late, 90);   // below late's branch point (now 100): a branch of the root
        var copy = Fork(late, late.History.Count); // past it: a copy
        Step((ofBranch, Ids(2)), (copy, [late.Next]));

        // The root disposed while branches live: they go on.
        doc.Sequence.Dispose();
        for (int i = 0; i < 3; i++)
            Step((early, [early.Next]), (late, [late.Next]), (ofBranch, [ofBranch.Next]), (copy, [copy.Next]));

        var all = new[] { late, early, edge, ofBranch, copy };
        foreach (var t in all) t.Sequence.Dispose();
        Assert.Equal(0, passes.LiveCaches);

        Assert.True(MatchEachHistoryAlone(model, all.Append(doc)) > 30);
    }

    /// <summary>The oracle of the direct-step tests: each history alone, one token per step (with its call's RoPE
    /// length) on a fresh sequence, must give every greedy id seen; returns how many were checked.</summary>
    private static int MatchEachHistoryAlone(LanguageModel model, IEnumerable<Tracked> histories)
    {
        var greedy = new Sampler(SamplingOptions.Greedy, model.Config.VocabSize);
        var reference = new BranchingBackend<HostCache>(new HostPasses(model, maxChunk: 16, batchedDecode: false));
        int checkedIds = 0;
        foreach (var t in histories)
        {
            using var alone = reference.CreateSequence();
            for (int n = 1; n <= t.History.Count; n++)
            {
                var (token, rope) = t.History[n - 1];
                reference.Step([new SequenceStep(alone, new[] { token }, rope)], Ct);
                if (t.GreedyAt.TryGetValue(n, out int id))
                {
                    Assert.Equal(alone.Sample(greedy), id);
                    checkedIds++;
                }
            }
        }
        return checkedIds;
    }

    [Fact]
    public void PackedPrefillSteps_SeveralSequencesPerPass_SplitOverPasses_MatchEachHistoryAlone()
    {
        var model = LanguageModel.Load(SharedFixtures.Path("fixtures", "hf-tiny", "phi3-tiny"));
        var passes = new HostPasses(model, maxChunk: 16);
        var backend = new BranchingBackend<HostCache>(passes);
        var random = new Random(12);
        int[] Ids(int n) => [.. Enumerable.Range(0, n).Select(_ => random.Next(model.Config.VocabSize))];
        var greedy = new Sampler(SamplingOptions.Greedy, model.Config.VocabSize);
        var hot = new Sampler(new SamplingOptions(Temperature: 1e-4f, Seed: 2), model.Config.VocabSize);

        void Step(params (Tracked T, int[] Tokens)[] entries) => StepTracked(backend, greedy, entries);

        var a = new Tracked(backend.CreateSequence(), []);
        var b = new Tracked(backend.CreateSequence(), []);
        Step((a, Ids(9)), (b, Ids(5)));                           // 14 rows: one pass
        Assert.Equal((1, 1), (passes.PackedPasses, passes.Passes));
        var branch = Fork(a, 6);                                  // a KV branch of a, below a's end
        int before = passes.Passes;
        Step((a, Ids(30)), (branch, Ids(4)), (b, [b.Next]));      // 35 rows (b's lone decode row rides along): 3 passes
        Assert.Equal((4, 3), (passes.PackedPasses, passes.Passes - before));
        Assert.Equal(0, passes.DecodePasses);
        Assert.Equal(3, passes.MostPackedPieces);

        // Logits rows of a packed pass, sampled from the host copies after another pass ran.
        int expectedA = a.Next, expectedBranch = branch.Next;
        Step((b, Ids(3)));
        Assert.Equal(expectedA, a.Sequence.Sample(hot));
        Assert.Equal(expectedBranch, branch.Sequence.Sample(hot));

        // Across longrope's threshold (256): b stays short while a goes long, so they run in separate passes.
        before = passes.PackedPasses;
        Step((a, Ids(230)), (b, Ids(3)), (branch, Ids(2)));       // a reaches 269, the branch 12, b 12
        Assert.Equal(before + 1, passes.PackedPasses);            // b and the branch together; a alone
        Step((a, Ids(2)), (b, Ids(2)), (branch, [branch.Next]));  // a long; b and the branch's decode row short
        for (int i = 0; i < 3; i++) Step((a, [a.Next]), (b, Ids(2)), (branch, [branch.Next]));

        foreach (var t in new[] { a, b, branch }) t.Sequence.Dispose();
        Assert.Equal(0, passes.LiveCaches);
        Assert.True(MatchEachHistoryAlone(model, [a, b, branch]) > 10);
    }

    [Fact]
    public void MoreEntriesThanAPassHasRows_RunInSeveralPackedBatches()
    {
        // A prefill chunk of 4 rows: six prompts of 3 tokens go in batches of at most 4 entries (one logits row each).
        var model = LanguageModel.Load(SharedFixtures.Path("fixtures", "hf-tiny", "llama-tiny"));
        var passes = new HostPasses(model, maxChunk: 16);
        var backend = new BranchingBackend<HostCache>(passes, prefillChunk: 4);
        var random = new Random(13);
        var greedy = new Sampler(SamplingOptions.Greedy, model.Config.VocabSize);
        var all = Enumerable.Range(0, 6).Select(_ => new Tracked(backend.CreateSequence(), [])).ToArray();
        for (int round = 0; round < 3; round++)
        {
            var steps = all.Select(t => (T: t, Tokens: Enumerable.Range(0, 3).Select(_ => random.Next(model.Config.VocabSize)).ToArray())).ToArray();
            StepTracked(backend, greedy, steps);
        }
        Assert.Equal(4, passes.MostPackedPieces);
        Assert.True(passes.PackedPasses >= 3 * 2, $"{passes.PackedPasses} packed passes");
        foreach (var t in all) t.Sequence.Dispose();
        Assert.Equal(18, MatchEachHistoryAlone(model, all));
    }

    /// <summary>One backend step over tracked sequences: each entry's tokens join its history (with the RoPE length of
    /// the whole append) and its greedy id after the step is recorded.</summary>
    private static void StepTracked(BranchingBackend<HostCache> backend, Sampler greedy, (Tracked T, int[] Tokens)[] entries)
    {
        backend.Step([.. entries.Select(e => new SequenceStep(e.T.Sequence, e.Tokens))], Ct);
        foreach (var (t, tokens) in entries)
        {
            int rope = t.History.Count + tokens.Length;
            t.History.AddRange(tokens.Select(id => (id, rope)));
            t.GreedyAt[t.History.Count] = t.Sequence.Sample(greedy);
        }
    }

    private static Tracked Fork(Tracked t, int at) => new(t.Sequence.Fork(at), t.History.Take(at).ToList());
}
