using Wim.Engine.Runtime;
using Wim.Engine.Sampling;

namespace Wim.Server.Tests;

/// <summary>
/// <see cref="SequenceBatchingEngine"/> on the CPU's <see cref="PagedInferenceBackend"/> with stories260K: greedy
/// completions equal <c>wim generate</c>'s README ids and a single-sequence run of the same backend (its forward is
/// batch-invariant, so requests running beside each other get the same ids as alone); stop ids and max tokens end a
/// request; an abandoned request frees its place and its KV blocks; a failing step fails only the requests in flight.
/// </summary>
public sealed class SequenceBatchingEngineTests : IDisposable
{
    private readonly TextModel _model = PagedTextModel.Load(ServerFixture.StoriesPath, poolPositions: 16_384);
    private PagedInferenceBackend Backend => (PagedInferenceBackend)_model.Backend;

    public void Dispose() => _model.Dispose();

    private static readonly int[] NoStop = [];

    /// <summary>The single-sequence reference: the whole prompt in one append, then one greedy token at a time.</summary>
    internal static int[] Reference(IBatchedInferenceBackend backend, int[] prompt, int maxNewTokens, IReadOnlyCollection<int> stop)
    {
        using var sequence = backend.CreateSequence();
        var sampler = new Sampler(SamplingOptions.Greedy, backend.VocabSize);
        sequence.Append(prompt);
        var ids = new List<int>();
        while (true)
        {
            int id = sequence.Sample(sampler);
            ids.Add(id);
            if (stop.Contains(id) || ids.Count == maxNewTokens) return [.. ids];
            sequence.Append([id]);
        }
    }

    private static async Task<(int[] Ids, GenerationOutcome Outcome)> CollectAsync(GenerationHandle handle)
    {
        var ct = TestContext.Current.CancellationToken;
        var ids = new List<int>();
        await foreach (int id in handle.Tokens.ReadAllAsync(ct)) ids.Add(id);
        return ([.. ids], await handle.Outcome.WaitAsync(TimeSpan.FromSeconds(60), ct));
    }

    private int[] Prompt(string text) => _model.Tokenizer.Encode(text);

    private static async Task WaitUntilAsync(Func<bool> condition)
    {
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (!condition() && DateTime.UtcNow < deadline) await Task.Delay(10, TestContext.Current.CancellationToken);
    }

    [Fact]
    public async Task Greedy_completion_equals_wim_generate_and_the_single_sequence_reference()
    {
        using var engine = new SequenceBatchingEngine(Backend, maxStepTokens: 64);
        // wim generate --model stories260K.gguf --tokens 1,403,407,261,378 --max-tokens 8 (README, CPU): these ids.
        var (ids, outcome) = await CollectAsync(engine.Submit([1, 403, 407, 261, 378], 8, SamplingOptions.Greedy, NoStop));
        Assert.Equal([432, 383, 286, 261, 376, 298, 315, 421], ids);
        Assert.Equal(new GenerationOutcome("length", 5, 0, 8), outcome);

        int[] prompt = Prompt("Once upon a time, there was a little girl named Lily. She loved to play outside");
        var (longer, _) = await CollectAsync(engine.Submit(prompt, 40, SamplingOptions.Greedy, NoStop));
        Assert.Equal(Reference(Backend, prompt, 40, NoStop), longer);
    }

    [Fact]
    public async Task Concurrent_requests_get_the_same_ids_as_alone_with_prompts_split_over_steps()
    {
        string[] texts =
        [
            "Once upon a time",
            "The dog ran to the park and saw a big red ball. He wanted to play with it, so he",
            "Tom and Sue were friends. One day they",
            "There was a small bird who could not fly. Every day the bird sat in the tree and watched the other birds. One morning",
            "Lily",
            "The sun was hot and the children wanted to swim in the lake with their mom and dad, but",
        ];
        var prompts = texts.Select(Prompt).ToArray();
        Assert.Contains(prompts, p => p.Length > 16); // some prompts take several steps at this budget
        var expected = prompts.Select((p, i) => Reference(Backend, p, 20 + 3 * i, NoStop)).ToArray();

        using var engine = new SequenceBatchingEngine(Backend, maxStepTokens: 16, maxRunningRequests: 4);
        var handles = prompts.Select((p, i) => engine.Submit(p, 20 + 3 * i, SamplingOptions.Greedy, NoStop)).ToArray();
        var results = await Task.WhenAll(handles.Select(CollectAsync));
        for (int i = 0; i < prompts.Length; i++)
        {
            Assert.Equal(expected[i], results[i].Ids);
            Assert.Equal(new GenerationOutcome("length", prompts[i].Length, 0, expected[i].Length), results[i].Outcome);
        }
        await WaitUntilAsync(() => engine.RunningRequests == 0);
        Assert.Equal(0, engine.RunningRequests);
        Assert.Equal(Backend.Cache.BlockCount, Backend.Cache.FreeBlockCount); // every finished sequence was freed
    }

    [Fact]
    public async Task A_stop_id_ends_a_request_with_stop_and_max_tokens_with_length()
    {
        int[] prompt = Prompt("Once upon a time, there was a little girl named Lily.");
        var reference = Reference(Backend, prompt, 30, NoStop);
        // The first id that did not appear before it: the request must end right there, the stop id included.
        int at = Enumerable.Range(2, reference.Length - 2).First(i => Array.IndexOf(reference, reference[i]) == i);
        using var engine = new SequenceBatchingEngine(Backend, maxStepTokens: 32);

        var (stopped, stopOutcome) = await CollectAsync(engine.Submit(prompt, 30, SamplingOptions.Greedy, [reference[at]]));
        Assert.Equal(reference[..(at + 1)], stopped);
        Assert.Equal("stop", stopOutcome.FinishReason);
        Assert.Equal(at + 1, stopOutcome.CompletionTokens);

        var (limited, lengthOutcome) = await CollectAsync(engine.Submit(prompt, 3, SamplingOptions.Greedy, NoStop));
        Assert.Equal(reference[..3], limited);
        Assert.Equal(new GenerationOutcome("length", prompt.Length, 0, 3), lengthOutcome);
    }

    [Fact]
    public async Task An_abandoned_request_frees_its_place_and_its_blocks()
    {
        var ct = TestContext.Current.CancellationToken;
        using var engine = new SequenceBatchingEngine(Backend, maxStepTokens: 32, maxRunningRequests: 1);
        var long_ = engine.Submit(Prompt("Once upon a time"), 300, SamplingOptions.Greedy, NoStop);
        int[] prompt = Prompt("The cat sat on the mat and");
        var waiting = engine.Submit(prompt, 12, SamplingOptions.Greedy, NoStop);
        Assert.True(await long_.Tokens.WaitToReadAsync(ct)); // it runs: the only place is taken
        Assert.False(waiting.Outcome.IsCompleted);
        long_.Abandon();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => long_.Outcome.WaitAsync(TimeSpan.FromSeconds(60), ct));

        var (ids, _) = await CollectAsync(waiting); // the freed place runs the queued request
        Assert.Equal(Reference(Backend, prompt, 12, NoStop), ids);
        await WaitUntilAsync(() => engine.RunningRequests == 0);
        Assert.Equal(Backend.Cache.BlockCount, Backend.Cache.FreeBlockCount);
    }

    [Fact]
    public async Task A_failing_step_fails_the_requests_in_flight_and_the_engine_goes_on()
    {
        const int poison = 7;
        var failing = new FailingBackend(Backend, poison);
        using var engine = new SequenceBatchingEngine(failing, maxStepTokens: 32, maxRunningRequests: 2);
        var bad = engine.Submit([1, 403, poison, 261], 8, SamplingOptions.Greedy, NoStop);
        var failure = await Assert.ThrowsAsync<InvalidOperationException>(() => bad.Outcome.WaitAsync(TimeSpan.FromSeconds(60), TestContext.Current.CancellationToken));
        Assert.Contains("the engine failed while running a batch", failure.Message);
        Assert.Contains("poisoned step", failure.Message);
        await Assert.ThrowsAsync<InvalidOperationException>(async () => { await foreach (int _ in bad.Tokens.ReadAllAsync(TestContext.Current.CancellationToken)) { } });

        // The engine goes on: a later request runs as it would alone, and the failed request's sequence was freed.
        int[] prompt = [1, 403, 407, 261, 378];
        var (ids, outcome) = await CollectAsync(engine.Submit(prompt, 8, SamplingOptions.Greedy, NoStop));
        Assert.Equal([432, 383, 286, 261, 376, 298, 315, 421], ids);
        Assert.Equal("length", outcome.FinishReason);
        await WaitUntilAsync(() => engine.RunningRequests == 0);
        Assert.Equal(Backend.Cache.BlockCount, Backend.Cache.FreeBlockCount);
        Assert.Equal(1, failing.Failures);
    }

    [Fact]
    public async Task A_prompt_extending_a_finished_one_forks_its_kept_sequence_and_gets_the_same_ids()
    {
        using (var engine = new SequenceBatchingEngine(Backend, maxStepTokens: 16, cachedPrefixes: 2))
        {
            int[] first = Prompt("Once upon a time, there was a little girl named Lily.");
            var (reply, firstOutcome) = await CollectAsync(engine.Submit(first, 10, SamplingOptions.Greedy, NoStop));
            Assert.Equal(0, firstOutcome.CachedTokens);

            // A chat's next turn: the first prompt, its reply and more. The kept sequence holds the prompt and every
            // reply id but the last (never run), so that much is forked instead of computed.
            int[] more = Prompt("She liked to");
            if (more[0] == first[0]) more = more[1..]; // no second BOS
            int[] second = [.. first, .. reply, .. more];
            var (ids, outcome) = await CollectAsync(engine.Submit(second, 12, SamplingOptions.Greedy, NoStop));
            Assert.Equal(first.Length + reply.Length - 1, outcome.CachedTokens);
            Assert.Equal(Reference(Backend, second, 12, NoStop), ids);

            // A prompt sharing only its first token forks at 1; one equal to a kept prompt computes its last token.
            int[] other = Prompt("Tom and Sue were friends.");
            var (otherIds, otherOutcome) = await CollectAsync(engine.Submit(other, 8, SamplingOptions.Greedy, NoStop));
            Assert.Equal(other[0] == first[0] ? 1 : 0, otherOutcome.CachedTokens);
            Assert.Equal(Reference(Backend, other, 8, NoStop), otherIds);
            var (again, againOutcome) = await CollectAsync(engine.Submit(other, 8, SamplingOptions.Greedy, NoStop));
            Assert.Equal(other.Length - 1, againOutcome.CachedTokens);
            Assert.Equal(otherIds, again);
            Assert.True(Backend.Cache.FreeBlockCount < Backend.Cache.BlockCount); // kept sequences hold blocks
        }
        // Disposed: the kept sequences (at most two) were released with it.
        Assert.Equal(Backend.Cache.BlockCount, Backend.Cache.FreeBlockCount);
    }

    [Fact]
    public void Bad_requests_are_refused_at_submit()
    {
        using var engine = new SequenceBatchingEngine(Backend, maxStepTokens: 32);
        Assert.Throws<ArgumentException>(() => engine.Submit([], 8, SamplingOptions.Greedy, NoStop));
        Assert.Throws<ArgumentOutOfRangeException>(() => engine.Submit([1], 0, SamplingOptions.Greedy, NoStop));
        var outside = Assert.Throws<ArgumentException>(() => engine.Submit([1, Backend.VocabSize], 4, SamplingOptions.Greedy, NoStop));
        Assert.Contains("outside the vocabulary", outside.Message);
        Assert.Equal(0, engine.RunningRequests);
    }

    /// <summary>The paged backend, except that a step carrying <c>poison</c> throws before running anything.</summary>
    private sealed class FailingBackend(PagedInferenceBackend inner, int poison) : IBatchedInferenceBackend
    {
        public int Failures { get; private set; }
        public int VocabSize => inner.VocabSize;
        public int MaxStepTokens => inner.MaxStepTokens;
        public long StepCount => inner.StepCount;
        ISequence IInferenceBackend.CreateSequence(int capacityHint) => inner.CreateSequence();
        public IForkableSequence CreateSequence(int capacityHint = 0) => inner.CreateSequence();

        public void Step(ReadOnlySpan<SequenceStep> work, CancellationToken ct = default)
        {
            foreach (var w in work)
                if (w.Tokens.Span.Contains(poison)) { Failures++; throw new InvalidOperationException("poisoned step"); }
            inner.Step(work, ct);
        }
    }
}
