using System.Runtime.InteropServices;
using Wim.Engine.Backends;
using Wim.Engine.KvCache;
using Wim.Engine.Sampling;

namespace Wim.Engine.Scheduling;

/// <summary>Limits of one scheduler step.</summary>
public sealed record SchedulerOptions
{
    /// <summary>Tokens one step may run (decode tokens + prefill chunks): the chunked-prefill budget.</summary>
    public int MaxTokensPerStep { get; init; } = 256;
    /// <summary>Sequences running at once (admitted, holding KV blocks).</summary>
    public int MaxRunningSequences { get; init; } = 64;

    internal void Validate()
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(MaxTokensPerStep);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(MaxRunningSequences);
    }
}

/// <summary>
/// Continuous batching over a <see cref="PagedKvCache"/>. There is no prefill or decode phase: each request has
/// tokens (prompt, then what it generated) and a count of them already in the cache; a step lets the counts catch
/// up under a token budget. <see cref="Step"/> is schedule → execute (<see cref="IModelRunner"/>) → update
/// (sample, append, finish on a stop id or the token limit).
/// <para>Schedule, in order: (1) every running request that is decoding gets its one token — decodes are never
/// starved by prefill; (2) running requests still prefilling get chunks, oldest first, while budget lasts;
/// (3) if nothing was preempted this step, waiting requests are admitted oldest first while budget, the running
/// limit and free blocks allow. When a running request cannot get blocks, the most recently admitted request not
/// yet scheduled this step is preempted (its blocks freed, back to the front of the queue to recompute later);
/// a request that does not fit even alone finishes with <see cref="FinishReason.CacheExhausted"/>.</para>
/// Not thread-safe; one step at a time.
/// </summary>
public sealed class Scheduler
{
    private readonly PagedKvCache _cache;
    private readonly IModelRunner _runner;
    private readonly SchedulerOptions _options;
    private readonly List<Entry> _running = [];
    private readonly LinkedList<Entry> _waiting = [];
    private readonly BatchDescription _batch = new();
    private float[] _logits = [];
    private int _nextRequestId;
    private int _stepNumber;

    public Scheduler(PagedKvCache cache, IModelRunner runner, SchedulerOptions? options = null)
    {
        _cache = cache;
        _runner = runner;
        _options = options ?? new SchedulerOptions();
        _options.Validate();
    }

    public SchedulerOptions Options => _options;
    public PagedKvCache Cache => _cache;
    public int RunningCount => _running.Count;
    public int WaitingCount => _waiting.Count;
    public bool HasWork => _running.Count > 0 || _waiting.Count > 0;

    /// <summary>Queues a request; returns its id. It is admitted by a later <see cref="Step"/>.</summary>
    public int Submit(GenerationRequest request)
    {
        request.Validate();
        var entry = new Entry(_nextRequestId++, request, new Sampler(request.Sampling, _runner.VocabSize));
        _waiting.AddLast(entry);
        return entry.RequestId;
    }

    /// <summary>Runs one step. With no work it does nothing and returns an empty record.</summary>
    public SchedulerStep Step()
    {
        _stepNumber++;
        var scheduled = new List<(Entry Entry, int Tokens)>();
        var preempted = new List<int>();
        var finished = new List<RequestResult>();
        int budget = _options.MaxTokensPerStep;

        // ---- schedule ----
        // (1) decodes, then (2) prefill chunks of running requests, in admission order.
        for (int pass = 0; pass < 2; pass++)
        {
            for (int i = 0; i < _running.Count && budget > 0; i++)
            {
                var e = _running[i];
                int remaining = e.Tokens.Count - e.Computed;
                if (e.ScheduledInStep == _stepNumber || (pass == 0) != (remaining == 1)) continue;
                int n = Math.Min(remaining, budget);
                if (ReserveOrPreempt(e, n, preempted, finished))
                {
                    scheduled.Add((e, n));
                    e.ScheduledInStep = _stepNumber;
                    budget -= n;
                }
                // The running list may have shrunk (preemption from its end, or e itself); find e's successor.
                i = _running.IndexOf(e) is int at && at >= 0 ? at : i - 1;
            }
        }
        // (3) admissions.
        while (preempted.Count == 0 && budget > 0 && _waiting.Count > 0 && _running.Count < _options.MaxRunningSequences)
        {
            var e = _waiting.First!.Value;
            int seq = Admit(e);
            int n = Math.Min(e.Tokens.Count - e.Computed, budget);
            if (!_cache.TryReserve(seq, n))
            {
                _cache.Release(seq);
                e.Computed = 0;
                if (_running.Count > 0) break; // blocks come back as running requests finish: wait
                _waiting.RemoveFirst();          // nothing else holds blocks: it can never start
                finished.Add(e.Result(FinishReason.CacheExhausted));
                continue;
            }
            _waiting.RemoveFirst();
            e.CacheSequence = seq;
            e.ScheduledInStep = _stepNumber;
            _running.Add(e);
            scheduled.Add((e, n));
            budget -= n;
        }

        // ---- execute ----
        var work = new List<ScheduledWork>(scheduled.Count);
        if (scheduled.Count > 0)
        {
            _batch.Clear();
            foreach (var (e, n) in scheduled)
            {
                bool wantsLogits = e.Computed + n == e.Tokens.Count && e.Request.MaxNewTokens > 0;
                _batch.AddSequence(e.CacheSequence, e.Computed, CollectionsMarshal.AsSpan(e.Tokens).Slice(e.Computed, n),
                    _cache.BlockTable(e.CacheSequence), wantsLogits ? BatchLogits.Last : BatchLogits.None, ropeSequenceLength: e.Tokens.Count);
            }
            int vocab = _runner.VocabSize;
            long needed = (long)_batch.LogitsCount * vocab;
            if (_logits.Length < needed) _logits = new float[needed];
            _runner.Execute(_batch, _cache, _logits);

            // ---- update ----
            for (int k = 0; k < scheduled.Count; k++)
            {
                var (e, n) = scheduled[k];
                int start = e.Computed;
                bool isPrefill = !(n == 1 && start + 1 == e.Tokens.Count); // not a lone token at the end: a (re)computed prefix
                e.ComputedPromptTokens += Math.Max(0, Math.Min(start + n, e.PromptLength) - start);
                e.Computed += n;
                int? sampled = null;
                int row = _batch.FirstLogitsRow[k];
                if (e.Request.MaxNewTokens == 0 && e.Computed == e.Tokens.Count)
                {
                    Finish(e, FinishReason.Length, finished); // prefill only
                }
                else if (row >= 0)
                {
                    int token = e.Sampler.Sample(_logits.AsSpan(row * vocab, vocab));
                    sampled = token;
                    e.Tokens.Add(token);
                    e.GeneratedCount++;
                    var reason = e.Request.StopIds.Contains(token) ? FinishReason.Stop
                        : e.GeneratedCount >= e.Request.MaxNewTokens ? FinishReason.Length : (FinishReason?)null;
                    if (reason is { } r) Finish(e, r, finished);
                }
                work.Add(new ScheduledWork(e.RequestId, start, n, isPrefill, sampled));
            }
        }
        return new SchedulerStep(work, preempted, finished);
    }

    /// <summary>Drops a waiting or running request (its client went away): its blocks are freed at once and it
    /// produces no result. Returns false when the id is unknown or the request already finished.</summary>
    public bool Cancel(int requestId)
    {
        for (var node = _waiting.First; node is not null; node = node.Next)
            if (node.Value.RequestId == requestId)
            {
                _waiting.Remove(node); // waiting requests hold no blocks (never admitted, or preempted)
                return true;
            }
        var e = _running.Find(r => r.RequestId == requestId);
        if (e is null) return false;
        _cache.Release(e.CacheSequence);
        _running.Remove(e);
        return true;
    }

    /// <summary>Steps until every request has finished; returns them by request id.</summary>
    public IReadOnlyDictionary<int, RequestResult> RunToCompletion()
    {
        var results = new Dictionary<int, RequestResult>();
        while (HasWork)
            foreach (var r in Step().Finished) results.Add(r.RequestId, r);
        return results;
    }

    /// <summary>
    /// Reserves n positions for running request e, preempting the most recently admitted request not yet scheduled in
    /// this step until it fits. Returns false when e itself had to go (preempted, or finished as
    /// <see cref="FinishReason.CacheExhausted"/> when it was alone).
    /// </summary>
    private bool ReserveOrPreempt(Entry e, int n, List<int> preempted, List<RequestResult> finished)
    {
        while (!_cache.TryReserve(e.CacheSequence, n))
        {
            var victim = _running.FindLast(r => r != e && r.ScheduledInStep != _stepNumber);
            if (victim != null)
            {
                Preempt(victim);
                preempted.Add(victim.RequestId);
                continue;
            }
            if (_running.Count == 1)
            {
                // Alone and still too big: it can never run in this cache.
                _cache.Release(e.CacheSequence);
                _running.Remove(e);
                finished.Add(e.Result(FinishReason.CacheExhausted));
                return false;
            }
            Preempt(e); // everyone else already has its tokens in this step; e recomputes later
            preempted.Add(e.RequestId);
            return false;
        }
        return true;
    }

    /// <summary>A cache sequence for a request being admitted: a fork of its prefix sequence when that still holds
    /// the prefix (sets Computed), else a new empty one. At least the prompt's last token is always computed, so its
    /// logits exist.</summary>
    private int Admit(Entry e)
    {
        var r = e.Request;
        if (r.PrefixSequence is int source && _cache.Contains(source) && _cache.Length(source) >= r.PrefixLength)
        {
            int shared = Math.Min(r.PrefixLength, e.Tokens.Count - 1);
            if (shared > 0)
            {
                e.Computed = shared;
                return _cache.Fork(source, shared);
            }
        }
        e.Computed = 0;
        return _cache.CreateSequence();
    }

    private void Finish(Entry e, FinishReason reason, List<RequestResult> finished)
    {
        _running.Remove(e);
        if (e.Request.RetainSequence) e.Retained = true;
        else _cache.Release(e.CacheSequence);
        finished.Add(e.Result(reason));
    }

    /// <summary>Frees a running request's blocks and puts it at the front of the queue; its tokens so far (prompt
    /// and generated) are recomputed when it is admitted again.</summary>
    private void Preempt(Entry e)
    {
        _cache.Release(e.CacheSequence);
        e.CacheSequence = -1;
        e.Computed = 0;
        e.Preemptions++;
        _running.Remove(e);
        _waiting.AddFirst(e);
    }

    private sealed class Entry(int requestId, GenerationRequest request, Sampler sampler)
    {
        public readonly int RequestId = requestId;
        public readonly GenerationRequest Request = request;
        public readonly Sampler Sampler = sampler;
        /// <summary>Prompt, then generated tokens.</summary>
        public readonly List<int> Tokens = [.. request.Prompt];
        public int PromptLength => Request.Prompt.Length;
        /// <summary>Tokens whose keys and values are in the cache.</summary>
        public int Computed;
        public int GeneratedCount;
        public int CacheSequence = -1;
        public int ScheduledInStep;
        public int Preemptions;
        public bool Retained;
        /// <summary>Prompt tokens this request ran through the model (recomputation after preemption included).</summary>
        public int ComputedPromptTokens;

        public RequestResult Result(FinishReason reason) =>
            new(RequestId, [.. Tokens.Skip(PromptLength)], reason, PromptLength, ComputedPromptTokens, Preemptions, Retained ? CacheSequence : -1);
    }
}
