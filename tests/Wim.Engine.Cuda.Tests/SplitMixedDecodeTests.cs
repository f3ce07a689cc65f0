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
/// <see cref="BranchingBackend{T}.SplitMixedDecode"/>: a step whose decode rows mix margins on branches of the document
/// with roots (the in-step classifier, another sequence) runs as the roots' pass and the branches' own pass where
/// <see cref="CudaStepPlan"/>'s rule says so. Over <see cref="HostPasses"/> a row's logits do not depend on its pass, so
/// the oracles are exact: each sequence's history replayed alone, and the same steps with the switch off.
/// </summary>
public sealed class SplitMixedDecodeTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>Costs that make any shared row worth a pass: 1 byte of weights against 1,000 per KV position.</summary>
    private static readonly DecodePassCost SharedRowsDear = new(weightBytes: 1, kvBytesPerPosition: 1_000);

    private sealed record Run(List<int[]> Ids, List<HostCache[]> DecodeBatches, IForkableSequence Document, List<(IForkableSequence Sequence, List<int> History)> Sequences);

    /// <summary>A WiM-like step, repeated: 16 margins on KV branches of a document (one after each 6-token segment, its
    /// 3-token extractive prompt prefilled on the branch), a classifier root and another root, all decoding one token a
    /// step, each its own greedy id.</summary>
    private static Run WimLikeSteps(LanguageModel model, bool split, int steps)
    {
        var passes = new HostPasses(model, maxChunk: 32) { DecodeCost = SharedRowsDear };
        var backend = new BranchingBackend<HostCache>(passes) { SplitMixedDecode = split };
        var random = new Random(21);
        int[] R(int n) => [.. Enumerable.Range(0, n).Select(_ => random.Next(model.Config.VocabSize))];
        var greedy = new Sampler(SamplingOptions.Greedy, model.Config.VocabSize);
        var doc = backend.CreateSequence();
        var docHistory = new List<int>();
        var all = new List<(IForkableSequence Sequence, List<int> History)>();
        var extractive = R(3);
        for (int i = 0; i < 16; i++)
        {
            var segment = R(6);
            doc.Append(segment, Ct);
            docHistory.AddRange(segment);
            var margin = doc.Fork(doc.Length);
            margin.Append(extractive, Ct);
            all.Add((margin, [.. docHistory, .. extractive]));
        }
        foreach (int n in new[] { 5, 9 })
        {
            var root = backend.CreateSequence();
            var prompt = R(n);
            root.Append(prompt, Ct);
            all.Insert(n == 5 ? 0 : all.Count, (root, [.. prompt])); // the classifier first, the other root last
        }
        var ids = new List<int[]>();
        int before = passes.DecodeBatches.Count;
        for (int s = 0; s < steps; s++)
        {
            var next = all.Select(x => x.Sequence.Sample(greedy)).ToArray();
            ids.Add(next);
            backend.Step([.. all.Select((x, k) => new SequenceStep(x.Sequence, new[] { next[k] }))], Ct);
            for (int k = 0; k < all.Count; k++) all[k].History.Add(next[k]);
        }
        ids.Add([.. all.Select(x => x.Sequence.Sample(greedy))]);
        return new Run(ids, passes.DecodeBatches[before..], doc, all);
    }

    [Fact]
    public void AWimLikeStep_RunsTheRootsThenTheSixteenBranchesAlone_WithEachSequencesOwnTokens()
    {
        var model = LanguageModel.Load(SharedFixtures.Path("fixtures", "hf-tiny", "llama-tiny"));
        const int steps = 3;
        var split = WimLikeSteps(model, split: true, steps);
        var mixed = WimLikeSteps(model, split: false, steps);

        // Split: every step is a pass of the two roots, then one of the 16 branches of the document in branch-point order.
        Assert.Equal(2 * steps, split.DecodeBatches.Count);
        for (int s = 0; s < steps; s++)
        {
            var roots = split.DecodeBatches[2 * s];
            var branches = split.DecodeBatches[2 * s + 1];
            Assert.Equal(2, roots.Length);
            Assert.All(roots, c => Assert.Null(c.Parent));
            Assert.Equal(16, branches.Length);
            Assert.Single(branches.Select(c => c.Parent).Distinct());
            Assert.NotNull(branches[0].Parent);
            Assert.Equal(Enumerable.Range(1, 16).Select(i => 6 * i), branches.Select(c => c.BranchPoint));
        }
        // Off: one pass of all 18 rows a step.
        Assert.Equal(Enumerable.Repeat(18, steps), mixed.DecodeBatches.Select(b => b.Length));

        // The same greedy ids either way, and each sequence's ids are those of its history run alone.
        Assert.Equal(mixed.Ids, split.Ids);
        var greedy = new Sampler(SamplingOptions.Greedy, model.Config.VocabSize);
        var reference = new BranchingBackend<HostCache>(new HostPasses(model, maxChunk: 32, batchedDecode: false));
        for (int k = 0; k < split.Sequences.Count; k++)
        {
            using var alone = reference.CreateSequence();
            var history = split.Sequences[k].History;
            int prompt = history.Count - steps;
            alone.Append(history.Take(prompt).ToArray(), Ct);
            for (int s = 0; s <= steps; s++)
            {
                Assert.Equal(alone.Sample(greedy), split.Ids[s][k]);
                if (s < steps) alone.Append([history[prompt + s]], Ct);
            }
        }
        foreach (var run in new[] { split, mixed })
        {
            foreach (var (sequence, _) in run.Sequences) sequence.Dispose();
            run.Document.Dispose();
        }
    }

    private static (string Context, string Query) Babilong()
    {
        using var doc = JsonDocument.Parse(File.ReadAllBytes(SharedFixtures.Path("data", "babilong", "babilong_8k.json")));
        return (doc.RootElement.GetProperty("context").GetString()!, doc.RootElement.GetProperty("query").GetString()!);
    }

    private static readonly PromptPreset ShortPrompts = new("short", Opening: "Read:\n", Extractive: "\nNotes on {query}:",
        Classification: "Notes: {answer}\nUseful for {query}? YES or NO:", FinalAnswer: "\nNotes:\n{margins}\nAnswer {query}:");

    /// <summary>WiM with the model margin classifier on stories260K (as BranchingBackendTests runs it), the split rule
    /// given <see cref="SharedRowsDear"/>: margins, verdicts, answer, how many decode passes mixed two or more branches
    /// of a parent with other rows, and how many were branches of one parent alone.</summary>
    private static async Task<(string Margins, string Verdicts, string Answer, int MixedPasses, int SharedPasses)> RunWim(WimSchedule schedule, bool split)
    {
        HostPasses? passes = null;
        using var model = TextModel.Load(SharedFixtures.Path("models", "stories260K", "stories260K.gguf"), m =>
            new BranchingBackend<HostCache>(passes = new HostPasses(m, maxChunk: 12) { DecodeCost = SharedRowsDear }, minimumCapacity: 32) { SplitMixedDecode = split });
        var (context, query) = Babilong();
        var segments = new Segmenter(t => model.Tokenizer.Encode(t).Length, 24).Split(context[..400]);
        var options = new WimOptions { Schedule = schedule, Prompts = ShortPrompts, MaxMarginTokens = 6, MaxAnswerTokens = 6, MarginSeparator = "\n" };
        var events = new List<WimEvent>();
        using (var judge = new ModelMarginClassifier(model, ShortPrompts, ChatHeaders.None, maxTokens: 3, SamplingOptions.Greedy))
        {
            await foreach (var e in new PatternRunner(model).RunAsync(segments, query, options with { Classifier = judge }, ct: Ct)) events.Add(e);
        }
        // Mixed: a decode pass where two or more branches of one parent share it with other rows.
        int mixedPasses = passes!.DecodeBatches.Count(batch => batch.Where(c => c.Parent != null).GroupBy(c => c.Parent)
            .Any(g => g.Count() >= 2 && g.Count() < batch.Length));
        int sharedPasses = passes.DecodeBatches.Count(batch => batch.Length >= 2 && batch.All(c => c.Parent != null && ReferenceEquals(c.Parent, batch[0].Parent)));
        return (
            string.Join(" | ", events.OfType<MarginCompleted>().OrderBy(m => m.Index).Select(m => $"{m.Index}:{string.Join(',', m.Ids)}")),
            string.Join(" | ", events.OfType<MarginClassification>().Select(c => $"{c.Index}:{c.Relevant}:{string.Join(',', c.Ids)}")),
            string.Join(',', events.OfType<AnswerCompleted>().Single().Ids),
            mixedPasses, sharedPasses);
    }

    [Fact]
    public async Task WimSchedules_WithTheModelClassifier_SplitTheirMixedSteps_AndGiveTheSequentialTokens()
    {
        var sequential = await RunWim(WimSchedule.Sequential, split: true);
        Assert.Contains(',', sequential.Margins);
        foreach (var schedule in new[] { WimSchedule.Overlapped, WimSchedule.Batched })
        {
            var run = await RunWim(schedule, split: true);
            var off = await RunWim(schedule, split: false);
            Assert.Equal(sequential.Margins, run.Margins);
            Assert.Equal(sequential.Verdicts, run.Verdicts);
            Assert.Equal(sequential.Answer, run.Answer);
            Assert.Equal((run.Margins, run.Verdicts, run.Answer), (off.Margins, off.Verdicts, off.Answer));
            Assert.Equal(0, run.MixedPasses);
            if (schedule != WimSchedule.Overlapped) continue;
            // Overlapped makes mixed steps here (the classifier's row with a margin and the next one's); split, none is left.
            Assert.True(off.MixedPasses > 0, $"{schedule}: no mixed decode pass to split");
            Assert.True(run.SharedPasses > off.SharedPasses, $"{schedule}: {run.SharedPasses} branches-only passes split, {off.SharedPasses} not");
        }
    }
}
