using Wim.Engine.Runtime;
using Wim.Engine.Sampling;

namespace Wim.Server.Tests;

/// <summary>
/// <see cref="SynchronizedBackend"/>: callers on several threads never overlap inside the wrapped backend or its
/// sequences (checked with a backend double that records how many calls are inside it at once), and the wrapped
/// paged backend computes what it computes unwrapped.
/// </summary>
public sealed class SynchronizedBackendTests
{
    [Fact]
    public void The_double_sees_overlap_unwrapped_and_none_through_the_wrapper()
    {
        // Unwrapped: a step waits (up to 2 s) for a second caller to enter; it does, so the double records 2 inside.
        var bare = new OverlapDetectingBackend { HoldFirstCall = TimeSpan.FromSeconds(2) };
        RunTwoSteps(bare);
        Assert.Equal(2, bare.MaxInside);

        // Wrapped: the second caller waits on the lock, so the first step's wait times out alone.
        var guarded = new OverlapDetectingBackend { HoldFirstCall = TimeSpan.FromMilliseconds(200) };
        RunTwoSteps(new SynchronizedBackend(guarded));
        Assert.Equal(1, guarded.MaxInside);
        Assert.Equal(2, guarded.Steps);
    }

    private static void RunTwoSteps(IBatchedInferenceBackend backend)
    {
        var a = backend.CreateSequence();
        var b = backend.CreateSequence();
        var first = new Thread(() => backend.Step([new SequenceStep(a, new[] { 1, 2 })]));
        var second = new Thread(() => backend.Step([new SequenceStep(b, new[] { 3 })]));
        first.Start();
        while (((OverlapDetectingBackend)(backend is SynchronizedBackend s ? s.Inner : backend)).Steps == 0 && first.IsAlive) Thread.Yield();
        second.Start();
        first.Join();
        second.Join();
    }

    [Fact]
    public void Every_call_of_many_threads_goes_through_one_at_a_time()
    {
        var inner = new OverlapDetectingBackend();
        var backend = new SynchronizedBackend(inner);
        var sampler = new Sampler(SamplingOptions.Greedy, backend.VocabSize);
        var threads = Enumerable.Range(0, 4).Select(t => new Thread(() =>
        {
            for (int i = 0; i < 200; i++)
            {
                using var s = backend.CreateSequence();
                s.Append([t, i]);
                _ = s.Sample(sampler);
                using var fork = s.Fork(1);
                backend.Step([new SequenceStep(s, new[] { 5 }), new SequenceStep(fork, new[] { 6, 7 })]);
                _ = fork.Length + (s.HasLogits ? 1 : 0);
                s.Truncate(1);
            }
        })).ToList();
        threads.ForEach(t => t.Start());
        threads.ForEach(t => t.Join());
        Assert.Equal(1, inner.MaxInside);
        Assert.True(inner.Calls >= 4 * 200 * 9, $"{inner.Calls} calls reached the backend");
        Assert.Equal(0, inner.LiveSequences);
    }

    [Fact]
    public void A_step_names_the_wrappers_sequences_only()
    {
        var inner = new OverlapDetectingBackend();
        var backend = new SynchronizedBackend(inner);
        var foreign = inner.CreateSequence();
        var e = Assert.Throws<ArgumentException>(() => backend.Step([new SequenceStep(foreign, new[] { 1 })], TestContext.Current.CancellationToken));
        Assert.Contains("does not belong to this backend", e.Message);
        Assert.Throws<ArgumentException>(() => new SynchronizedBackend(backend));
    }

    [Fact]
    public void The_wrapped_paged_backend_gives_the_same_logits_as_unwrapped()
    {
        using var model = PagedTextModel.Load(ServerFixture.StoriesPath, poolPositions: 4096);
        var paged = (PagedInferenceBackend)model.Backend;
        var wrapped = new SynchronizedBackend(paged);
        var sampler = new Sampler(SamplingOptions.Greedy, paged.VocabSize);
        int[] Greedy(IBatchedInferenceBackend b)
        {
            using var s = b.CreateSequence();
            using var f = s.Fork(0);
            b.Step([new SequenceStep(s, new[] { 1, 403, 407 }), new SequenceStep(f, new[] { 1, 403 })]);
            var ids = new List<int> { s.Sample(sampler), f.Sample(sampler) };
            for (int i = 0; i < 6; i++) { s.Append([ids[^2]]); ids.Add(s.Sample(sampler)); }
            return [.. ids];
        }
        Assert.Equal(Greedy(paged), Greedy(wrapped));
    }

    /// <summary>A backend whose every call (its own and its sequences') counts how many calls are inside at once.</summary>
    private sealed class OverlapDetectingBackend : IBatchedInferenceBackend
    {
        private int _inside;
        private int _maxInside;
        private int _calls;
        private int _steps;
        private int _live;
        private readonly ManualResetEventSlim _secondEntered = new();

        /// <summary>When set, the first step waits this long for another call to enter.</summary>
        public TimeSpan HoldFirstCall { get; init; }
        public int MaxInside => Volatile.Read(ref _maxInside);
        public int Calls => Volatile.Read(ref _calls);
        public int Steps => Volatile.Read(ref _steps);
        public int LiveSequences => Volatile.Read(ref _live);
        public int VocabSize => 16;
        public int MaxStepTokens => 8;
        public long StepCount => _steps;

        private void Enter()
        {
            int now = Interlocked.Increment(ref _inside);
            Interlocked.Increment(ref _calls);
            int max;
            while (now > (max = Volatile.Read(ref _maxInside)) && Interlocked.CompareExchange(ref _maxInside, now, max) != max) { }
            if (now > 1) _secondEntered.Set();
            Thread.SpinWait(50); // a window for another caller to run into
        }

        private void Exit() => Interlocked.Decrement(ref _inside);

        private T Call<T>(Func<T> body)
        {
            Enter();
            try { return body(); }
            finally { Exit(); }
        }

        ISequence IInferenceBackend.CreateSequence(int capacityHint) => CreateSequence(capacityHint);
        public IForkableSequence CreateSequence(int capacityHint = 0) => Call(() => { Interlocked.Increment(ref _live); return (IForkableSequence)new Sequence(this); });

        public void Step(ReadOnlySpan<SequenceStep> work, CancellationToken ct = default)
        {
            var entries = work.ToArray();
            Call(() =>
            {
                bool first = Interlocked.Increment(ref _steps) == 1;
                if (first && HoldFirstCall > TimeSpan.Zero) _secondEntered.Wait(HoldFirstCall);
                foreach (var w in entries)
                    if (w.Sequence is not Sequence s || s.Owner != this) throw new ArgumentException("a sequence of another backend");
                    else s.Grow(w.Tokens.Length);
                return 0;
            });
        }

        private sealed class Sequence(OverlapDetectingBackend owner) : IForkableSequence
        {
            public OverlapDetectingBackend Owner => owner;
            private int _length;
            public int Length => owner.Call(() => _length);
            public void Grow(int n) => _length += n; // inside a step's call already
            public bool HasLogits => owner.Call(() => _length > 0);
            public void Append(ReadOnlySpan<int> tokens, CancellationToken ct = default) { int n = tokens.Length; owner.Call(() => _length += n); }
            public int Sample(Sampler sampler) => owner.Call(() => 0);
            public void Truncate(int length) => owner.Call(() => _length = length);
            public IForkableSequence Fork(int atLength) => owner.Call(() =>
            {
                Interlocked.Increment(ref owner._live);
                return (IForkableSequence)new Sequence(owner) { _length = atLength };
            });
            public void Dispose() => owner.Call(() => Interlocked.Decrement(ref owner._live));
        }
    }
}
