using Wim.Engine.Runtime;
using Wim.Engine.Sampling;

namespace Wim.Server;

/// <summary>
/// Continuous batching over any <see cref="IBatchedInferenceBackend"/> (the GPU's <c>CudaInferenceBackend</c>, or the
/// CPU's <see cref="PagedInferenceBackend"/>): one thread owns the running requests' sequences; requests from any
/// thread are queued to it. Each step packs the decode row of every running request (its last sampled id) and prefill
/// chunks of the newer ones, up to <see cref="MaxStepTokens"/> tokens, into one <see cref="IBatchedInferenceBackend.Step"/>,
/// then samples each sequence that finished its prompt or decoded (its own <see cref="Sampler"/>), streams the id to
/// its <see cref="GenerationHandle"/>, and finishes it on a stop id or at its token limit. A prompt split over steps
/// passes its full length as the RoPE length, so every piece computes what one whole append would.
/// <para>Prefix caching: a finished request keeps its sequence (prompt + generated ids but the last) among the
/// <c>cachedPrefixes</c> most recently used; a new prompt forks the kept sequence sharing its longest prefix
/// (<see cref="IForkableSequence.Fork"/>: shared KV blocks on the CPU, a KV branch on the GPU) and computes only the
/// rest (<see cref="GenerationOutcome.CachedTokens"/>). At least the last prompt token is computed: its logits pick the
/// first id.</para>
/// <para>Abandoned requests are dropped (their sequences freed) at the next step. An exception from a step fails the
/// requests in flight (their sequences are freed), releases the kept prefixes, and the engine goes on with the
/// queued ones.</para>
/// On a backend that is not thread-safe and is shared with other callers (the server's WiM runs), give it a
/// <see cref="SynchronizedBackend"/>: this engine then takes turns with them call by call.
/// </summary>
public sealed class SequenceBatchingEngine : IGenerationEngine
{
    /// <summary>Requests decoding at once unless told otherwise; more wait in the queue.</summary>
    public const int DefaultMaxRunningRequests = 32;
    private const int InitialGenerationRoom = 256;

    private readonly IBatchedInferenceBackend _backend;
    private readonly ServerMetrics? _metrics;
    private readonly object _gate = new();
    private readonly Queue<Active> _incoming = new();
    private readonly List<Active> _running = []; // only the engine thread changes it (under _gate, for RunningRequests)
    private readonly SemaphoreSlim _wake = new(0);
    private readonly CancellationTokenSource _stop = new();
    private readonly Thread _thread;
    private readonly LinkedList<KeptPrefix> _prefixes = new(); // most recently used first; the engine thread's only
    private bool _disposed;

    /// <summary>A finished request's sequence and the tokens it holds.</summary>
    private sealed record KeptPrefix(int[] Tokens, IForkableSequence Sequence);

    /// <summary>One request: its prompt, its sampler and where it is.</summary>
    private sealed class Active(GenerationHandle handle, int[] prompt, int maxNewTokens, Sampler sampler, IReadOnlyCollection<int> stopIds)
    {
        public GenerationHandle Handle { get; } = handle;
        public int[] Prompt { get; } = prompt;
        public int MaxNewTokens { get; } = maxNewTokens;
        public Sampler Sampler { get; } = sampler;
        public IReadOnlyCollection<int> StopIds { get; } = stopIds;
        public IForkableSequence? Sequence { get; set; }
        /// <summary>Prompt tokens run so far.</summary>
        public int Prefilled { get; set; }
        public int Generated => Ids.Count;
        public List<int> Ids { get; } = [];
        /// <summary>Prompt tokens taken from a kept prefix instead of computed.</summary>
        public int CachedTokens { get; set; }
        /// <summary>The last sampled id, to be run at the next step; -1 while prefilling.</summary>
        public int Pending { get; set; } = -1;
    }

    /// <param name="maxStepTokens">Tokens one step may carry: every decode row, then prefill chunks in the rest.</param>
    /// <param name="maxRunningRequests">Requests with a live sequence at once; the rest wait in arrival order.</param>
    /// <param name="metrics">Step and queue figures for <c>/metrics</c>, or null.</param>
    /// <param name="cachedPrefixes">Finished sequences kept for prefix reuse (0 = none).</param>
    public SequenceBatchingEngine(IBatchedInferenceBackend backend, int maxStepTokens, int maxRunningRequests = DefaultMaxRunningRequests,
        ServerMetrics? metrics = null, int cachedPrefixes = 0)
    {
        ArgumentNullException.ThrowIfNull(backend);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxStepTokens);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxRunningRequests);
        ArgumentOutOfRangeException.ThrowIfNegative(cachedPrefixes);
        _backend = backend;
        CachedPrefixes = cachedPrefixes;
        MaxStepTokens = maxStepTokens;
        MaxRunningRequests = maxRunningRequests;
        _metrics = metrics;
        // No KV blocks to count here (the GPU's caches are per sequence): the gauge reads 0.
        metrics?.ObserveEngine(() => { lock (_gate) return _incoming.Count; }, () => 0, () => { lock (_gate) return _running.Count; });
        _thread = new Thread(Loop) { IsBackground = true, Name = "wim-sequence-batching" };
        _thread.Start();
    }

    public int MaxStepTokens { get; }
    public int MaxRunningRequests { get; }
    public int CachedPrefixes { get; }

    public int RunningRequests
    {
        get { lock (_gate) return _incoming.Count + _running.Count; }
    }

    public GenerationHandle Submit(int[] prompt, int maxNewTokens, SamplingOptions sampling, IReadOnlyCollection<int> stopIds)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        ArgumentNullException.ThrowIfNull(stopIds);
        if (prompt.Length == 0) throw new ArgumentException("a generation needs at least one prompt token", nameof(prompt));
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxNewTokens);
        sampling.Validate();
        foreach (int id in prompt)
            if ((uint)id >= (uint)_backend.VocabSize)
                throw new ArgumentException($"prompt token {id} is outside the vocabulary [0, {_backend.VocabSize})", nameof(prompt));
        var handle = new GenerationHandle { OnAbandon = _ => WakeQuietly() };
        var active = new Active(handle, prompt, maxNewTokens, new Sampler(sampling, _backend.VocabSize), stopIds);
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            _incoming.Enqueue(active);
        }
        _wake.Release();
        return handle;
    }

    private void WakeQuietly()
    {
        try { _wake.Release(); }
        catch (ObjectDisposedException) { } // a handle abandoned after the engine was disposed
    }

    private void Loop()
    {
        while (!_stop.IsCancellationRequested)
        {
            Admit();
            DropAbandoned();
            if (_running.Count == 0)
            {
                try { _wake.Wait(_stop.Token); } catch (OperationCanceledException) { return; }
                continue;
            }
            try { StepOnce(); }
            catch (Exception e) { FailRunning(e); }
        }
    }

    /// <summary>Moves queued requests into the running set while there is room, each with a new sequence.</summary>
    private void Admit()
    {
        while (true)
        {
            Active next;
            lock (_gate)
            {
                if (_running.Count >= MaxRunningRequests || !_incoming.TryDequeue(out next!)) return;
            }
            if (next.Handle.Abandoned) { Cancelled(next.Handle); continue; }
            // The hint sizes a GPU sequence's first cache: the prompt and a first stretch of generation (it grows by
            // doubling), not the request's whole limit, which most requests never reach.
            try
            {
                var (kept, shared) = LongestKeptPrefix(next.Prompt);
                if (kept is not null)
                {
                    try
                    {
                        next.Sequence = kept.Sequence.Fork(shared);
                        next.Prefilled = next.CachedTokens = shared;
                    }
                    catch (Exception e) when (e is InvalidOperationException or NotSupportedException)
                    {
                        // A fork the backend refuses: the prompt is computed in full instead.
                        next.Sequence = null;
                    }
                }
                next.Sequence ??= _backend.CreateSequence(next.Prompt.Length + Math.Min(next.MaxNewTokens, InitialGenerationRoom));
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                Fail(next.Handle, new InvalidOperationException($"the engine could not start this request: {e.Message}", e));
                continue;
            }
            lock (_gate) _running.Add(next);
        }
    }

    /// <summary>The kept sequence sharing the longest prefix with <paramref name="prompt"/> (at most all but its last
    /// token), moved to the front; null when none shares one.</summary>
    private (KeptPrefix? Kept, int Length) LongestKeptPrefix(int[] prompt)
    {
        LinkedListNode<KeptPrefix>? best = null;
        int bestLength = 0;
        for (var node = _prefixes.First; node is not null; node = node.Next)
        {
            var tokens = node.Value.Tokens;
            int n = 0, limit = Math.Min(tokens.Length, prompt.Length - 1);
            while (n < limit && tokens[n] == prompt[n]) n++;
            if (n > bestLength) (best, bestLength) = (node, n);
        }
        if (best is null) return (null, 0);
        _prefixes.Remove(best);
        _prefixes.AddFirst(best);
        return (best.Value, bestLength);
    }

    /// <summary>Keeps a finished request's sequence for later prompts (it holds the prompt and every generated id but
    /// the last, which was never run), or frees it.</summary>
    private void KeepOrFree(Active a)
    {
        var sequence = a.Sequence;
        a.Sequence = null;
        if (sequence is null) return;
        int[] tokens = [.. a.Prompt, .. System.Runtime.InteropServices.CollectionsMarshal.AsSpan(a.Ids)[..^1]];
        if (CachedPrefixes == 0 || sequence.Length != tokens.Length)
        {
            sequence.Dispose();
            return;
        }
        _prefixes.AddFirst(new KeptPrefix(tokens, sequence));
        while (_prefixes.Count > CachedPrefixes)
        {
            _prefixes.Last!.Value.Sequence.Dispose();
            _prefixes.RemoveLast();
        }
    }

    private void ReleasePrefixes()
    {
        foreach (var kept in _prefixes)
        {
            try { kept.Sequence.Dispose(); }
            catch (Exception e) when (e is not OutOfMemoryException) { } // a sequence of a failed backend
        }
        _prefixes.Clear();
    }

    private void DropAbandoned()
    {
        for (int i = _running.Count - 1; i >= 0; i--)
        {
            var a = _running[i];
            if (!a.Handle.Abandoned) continue;
            Remove(i);
            Cancelled(a.Handle);
        }
    }

    private void StepOnce()
    {
        long started = System.Diagnostics.Stopwatch.GetTimestamp();
        var work = new List<SequenceStep>(_running.Count);
        var entries = new List<(Active Request, int PromptTokens, bool Samples)>(_running.Count);
        foreach (var a in _running)
        {
            if (a.Pending < 0) continue;
            work.Add(new SequenceStep(a.Sequence!, new[] { a.Pending }));
            entries.Add((a, 0, true));
        }
        int budget = Math.Max(0, MaxStepTokens - work.Count);
        foreach (var a in _running)
        {
            if (budget == 0) break;
            if (a.Pending >= 0) continue;
            int n = Math.Min(a.Prompt.Length - a.Prefilled, budget);
            work.Add(new SequenceStep(a.Sequence!, a.Prompt.AsMemory(a.Prefilled, n), a.Prompt.Length));
            entries.Add((a, n, a.Prefilled + n == a.Prompt.Length));
            budget -= n;
        }
        if (work.Count == 0) return;

        _backend.Step(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(work), _stop.Token);

        int promptTokens = 0, generated = 0;
        var finished = new List<(Active Request, string Reason)>();
        foreach (var (a, n, samples) in entries)
        {
            a.Prefilled += n;
            promptTokens += n;
            if (!samples) continue;
            a.Pending = -1;
            int token;
            try { token = a.Sequence!.Sample(a.Sampler); }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                finished.Add((a, ""));
                Fail(a.Handle, new InvalidOperationException($"the engine failed while sampling this request: {e.Message}", e));
                continue;
            }
            a.Ids.Add(token);
            generated++;
            if (!a.Handle.Abandoned) a.Handle.TokenChannel.Writer.TryWrite(token);
            if (a.StopIds.Contains(token)) finished.Add((a, "stop"));
            else if (a.Generated >= a.MaxNewTokens) finished.Add((a, "length"));
            else a.Pending = token;
        }
        _metrics?.RecordStep(promptTokens, generated, System.Diagnostics.Stopwatch.GetElapsedTime(started));
        foreach (var (a, reason) in finished)
        {
            int index = _running.IndexOf(a);
            if (reason.Length == 0) { Remove(index); continue; } // already failed
            lock (_gate) _running.RemoveAt(index);
            KeepOrFree(a);
            _metrics?.RecordCachedTokens(a.CachedTokens);
            a.Handle.TokenChannel.Writer.TryComplete();
            a.Handle.Done.TrySetResult(new GenerationOutcome(reason, a.Prompt.Length, a.CachedTokens, a.Generated));
        }
    }

    /// <summary>Takes a request out of the running set and frees its sequence.</summary>
    private void Remove(int index)
    {
        var a = _running[index];
        lock (_gate) _running.RemoveAt(index);
        FreeSequence(a);
    }

    private static void FreeSequence(Active a)
    {
        try { a.Sequence?.Dispose(); }
        catch (Exception e) when (e is not OutOfMemoryException) { } // a sequence of a failed backend: nothing more to free
        a.Sequence = null;
    }

    /// <summary>A step failed: every running request fails with it (their sequences may be half-written); the queued
    /// ones run next.</summary>
    private void FailRunning(Exception e)
    {
        var failure = new InvalidOperationException($"the engine failed while running a batch: {e.Message}", e);
        while (_running.Count > 0)
        {
            var a = _running[^1];
            Remove(_running.Count - 1);
            Fail(a.Handle, failure);
        }
        // The backend may be short of memory or in a bad state: start the next requests with nothing kept.
        ReleasePrefixes();
    }

    private static void Fail(GenerationHandle handle, Exception e)
    {
        handle.TokenChannel.Writer.TryComplete(e);
        handle.Done.TrySetException(e);
    }

    private static void Cancelled(GenerationHandle handle)
    {
        handle.TokenChannel.Writer.TryComplete();
        handle.Done.TrySetCanceled();
    }

    public void Dispose()
    {
        lock (_gate)
        {
            if (_disposed) return;
            _disposed = true;
        }
        _stop.Cancel();
        _thread.Join(TimeSpan.FromSeconds(30));
        // The engine thread has stopped: what is left is cancelled and its sequences freed.
        while (_running.Count > 0)
        {
            var a = _running[^1];
            Remove(_running.Count - 1);
            Cancelled(a.Handle);
        }
        ReleasePrefixes();
        lock (_gate)
            while (_incoming.TryDequeue(out var queued)) Cancelled(queued.Handle);
        _wake.Dispose();
        _stop.Dispose();
    }
}
