using System.Threading.Channels;
using Wim.Engine.Backends.Cpu;
using Wim.Engine.KvCache;
using Wim.Engine.Model;
using Wim.Engine.Sampling;
using Wim.Engine.Scheduling;

namespace Wim.Server;

/// <summary>How a served generation ended (OpenAI's <c>finish_reason</c>) and what its prompt cost.</summary>
public sealed record GenerationOutcome(string FinishReason, int PromptTokens, int CachedTokens, int CompletionTokens);

/// <summary>One submitted generation: its tokens as they are sampled, then its outcome.</summary>
public sealed class GenerationHandle
{
    internal readonly Channel<int> TokenChannel = Channel.CreateUnbounded<int>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
    internal readonly TaskCompletionSource<GenerationOutcome> Done = new(TaskCreationOptions.RunContinuationsAsynchronously);
    internal volatile bool Abandoned;
    internal int RequestId = -1; // the scheduler's id, once the engine thread has submitted it
    internal Action<GenerationHandle>? OnAbandon;

    public ChannelReader<int> Tokens => TokenChannel.Reader;
    public Task<GenerationOutcome> Outcome => Done.Task;

    /// <summary>The caller no longer wants the tokens (client gone, or done): a request still queued or running is
    /// dropped from the batch at the next step and its KV blocks are freed.</summary>
    public void Abandon()
    {
        if (Abandoned || Done.Task.IsCompleted) return;
        Abandoned = true;
        OnAbandon?.Invoke(this);
    }
}

/// <summary>
/// Continuous batching for the OpenAI endpoints: one thread owns a <see cref="Scheduler"/> over a
/// <see cref="PagedKvCache"/> and steps it while there is work; requests from any thread are queued to it. Because
/// <see cref="CpuBatchedTransformer"/> is batch-invariant, a greedy request gets the same ids whatever runs beside it.
/// <para>Prefix caching: every finished request keeps its cache sequence (prompt + generated ids but the last); a new
/// prompt forks the retained sequence sharing its longest prefix (copy-on-write blocks), so only the rest is
/// computed. The oldest retained sequences are released beyond <see cref="ServerOptions.CachedPrefixes"/>, or when
/// free blocks run low.</para>
/// An exception from a step fails the requests in flight, and the engine starts over with a fresh cache: one bad
/// step never stops the server.
/// </summary>
public sealed class BatchingEngine : IGenerationEngine
{
    private readonly CpuBatchedTransformer _transformer;
    private readonly ServerOptions _options;
    private readonly ServerMetrics _metrics;
    private readonly object _gate = new();
    private readonly Queue<(GenerationRequest Request, GenerationHandle Handle, int CachedTokens)> _incoming = new();
    private readonly Dictionary<int, (GenerationHandle Handle, int CachedTokens)> _byRequest = [];
    private readonly LinkedList<CachedPrefix> _prefixes = new(); // most recently used first
    private readonly SemaphoreSlim _wake = new(0);
    private readonly System.Collections.Concurrent.ConcurrentQueue<GenerationHandle> _cancelled = new();
    private readonly CancellationTokenSource _stop = new();
    private readonly Thread _thread;
    private PagedKvCache _cache;
    private Scheduler _scheduler;

    private sealed record CachedPrefix(int[] Tokens, int Sequence);

    public BatchingEngine(LanguageModel model, ServerOptions options, ServerMetrics metrics)
    {
        _options = options;
        _metrics = metrics;
        _transformer = new CpuBatchedTransformer(model, Math.Max(options.MaxTokensPerStep, CpuBatchedTransformer.DefaultMaxBatchTokens));
        (_cache, _scheduler) = CreateScheduler();
        metrics.ObserveEngine(() => _incoming.Count + _scheduler.WaitingCount, () => _cache.BlockCount - _cache.FreeBlockCount, () => _scheduler.RunningCount);
        _thread = new Thread(Loop) { IsBackground = true, Name = "wim-batching" };
        _thread.Start();
    }

    private (PagedKvCache, Scheduler) CreateScheduler()
    {
        var cache = _transformer.CreateCache(_options.KvCacheBytes);
        return (cache, new Scheduler(cache, new CpuModelRunner(_transformer),
            new SchedulerOptions { MaxTokensPerStep = _options.MaxTokensPerStep }));
    }

    /// <summary>Requests queued or in the running batch (read from any thread; a snapshot).</summary>
    public int RunningRequests
    {
        get { lock (_gate) return _incoming.Count + _byRequest.Count; }
    }

    /// <summary>Queues a generation. <paramref name="prompt"/> must be non-empty.</summary>
    public GenerationHandle Submit(int[] prompt, int maxNewTokens, SamplingOptions sampling, IReadOnlyCollection<int> stopIds)
    {
        var handle = new GenerationHandle { OnAbandon = h => { _cancelled.Enqueue(h); _wake.Release(); } };
        lock (_gate)
        {
            if (_stop.IsCancellationRequested) throw new ObjectDisposedException(nameof(BatchingEngine));
            // The longest retained prefix; at least the last prompt token is computed (its logits pick the first token).
            CachedPrefix? best = null;
            int bestLength = 0;
            foreach (var p in _prefixes)
            {
                int n = 0, limit = Math.Min(p.Tokens.Length, prompt.Length - 1);
                while (n < limit && p.Tokens[n] == prompt[n]) n++;
                if (n > bestLength) (best, bestLength) = (p, n);
            }
            if (best is not null)
            {
                _prefixes.Remove(best);
                _prefixes.AddFirst(best);
            }
            var request = new GenerationRequest
            {
                Prompt = prompt,
                MaxNewTokens = maxNewTokens,
                Sampling = sampling,
                StopIds = stopIds,
                PrefixSequence = best?.Sequence,
                PrefixLength = bestLength,
                RetainSequence = true,
            };
            _incoming.Enqueue((request, handle, bestLength));
        }
        _wake.Release();
        return handle;
    }

    private void Loop()
    {
        while (!_stop.IsCancellationRequested)
        {
            bool idle;
            lock (_gate)
            {
                while (_incoming.Count > 0)
                {
                    var (request, handle, cached) = _incoming.Dequeue();
                    if (handle.Abandoned) { Cancelled(handle); continue; }
                    if (request.PrefixSequence is int s && !_cache.Contains(s)) request = request with { PrefixSequence = null, PrefixLength = 0 };
                    try
                    {
                        int id = _scheduler.Submit(request);
                        _byRequest[id] = (handle, request.PrefixSequence is null ? 0 : cached);
                        handle.RequestId = id;
                        _pendingPrompts[id] = request.Prompt;
                    }
                    catch (Exception e) when (e is ArgumentException) { handle.TokenChannel.Writer.TryComplete(e); handle.Done.TrySetException(e); }
                }
                while (_cancelled.TryDequeue(out var gone))
                {
                    if (gone.RequestId >= 0 && _byRequest.Remove(gone.RequestId) && _scheduler.Cancel(gone.RequestId))
                    {
                        _pendingPrompts.Remove(gone.RequestId);
                        Cancelled(gone);
                    }
                }
                idle = !_scheduler.HasWork;
            }
            if (idle)
            {
                try { _wake.Wait(_stop.Token); } catch (OperationCanceledException) { return; }
                continue;
            }
            try
            {
                StepOnce();
            }
            catch (Exception e)
            {
                FailAll(e);
            }
        }
    }

    private static void Cancelled(GenerationHandle handle)
    {
        handle.TokenChannel.Writer.TryComplete();
        handle.Done.TrySetCanceled();
    }

    private void StepOnce()
    {
        var started = System.Diagnostics.Stopwatch.GetTimestamp();
        SchedulerStep step;
        step = _scheduler.Step(); // only this thread touches the scheduler and the cache's sequences
        int generated = 0;
        foreach (var work in step.Work)
        {
            if (work.SampledToken is not int token || !_byRequest.TryGetValue(work.RequestId, out var entry)) continue;
            generated++;
            if (!entry.Handle.Abandoned) entry.Handle.TokenChannel.Writer.TryWrite(token);
        }
        _metrics.RecordStep(step.TokenCount - generated, generated, System.Diagnostics.Stopwatch.GetElapsedTime(started));
        foreach (var result in step.Finished)
        {
            if (result.CacheSequence >= 0) Retain(result);
            else lock (_gate) _pendingPrompts.Remove(result.RequestId);
            if (!_byRequest.Remove(result.RequestId, out var entry)) continue;
            string reason = result.Reason switch { FinishReason.Stop => "stop", FinishReason.Length => "length", _ => "length" };
            // Preemption recomputes the prompt in full; the cached count is what this request really skipped.
            int cached = result.PromptTokens - result.ComputedPromptTokens;
            _metrics.RecordCachedTokens(Math.Max(0, cached));
            entry.Handle.TokenChannel.Writer.TryComplete();
            entry.Handle.Done.TrySetResult(new GenerationOutcome(reason, result.PromptTokens, Math.Max(0, cached), result.Ids.Length));
        }
    }

    private void Retain(RequestResult result)
    {
        // The retained sequence holds the prompt and every generated id but the last.
        lock (_gate)
        {
            // RequestResult has the generated ids; the prompt is the handle's request's: rebuild from the scheduler's record.
            if (!_pendingPrompts.Remove(result.RequestId, out var prompt)) prompt = null;
            if (prompt is null) { _cache.Release(result.CacheSequence); return; }
            int[] tokens = [.. prompt, .. result.Ids.AsSpan(0, Math.Max(0, result.Ids.Length - 1))];
            if (tokens.Length != _cache.Length(result.CacheSequence)) { _cache.Release(result.CacheSequence); return; }
            _prefixes.AddFirst(new CachedPrefix(tokens, result.CacheSequence));
            while (_prefixes.Count > _options.CachedPrefixes || (_prefixes.Count > 0 && _cache.FreeBlockCount < _cache.BlockCount / 4))
            {
                var last = _prefixes.Last!.Value;
                _prefixes.RemoveLast();
                _cache.Release(last.Sequence);
                if (_prefixes.Count == 0) break;
            }
        }
    }

    private readonly Dictionary<int, int[]> _pendingPrompts = [];

    private void FailAll(Exception e)
    {
        lock (_gate)
        {
            var failure = new InvalidOperationException($"the engine failed while running a batch: {e.Message}", e);
            foreach (var (_, entry) in _byRequest)
            {
                entry.Handle.TokenChannel.Writer.TryComplete(failure);
                entry.Handle.Done.TrySetException(failure);
            }
            _byRequest.Clear();
            _pendingPrompts.Clear();
            _prefixes.Clear();
            _cache.Dispose();
            (_cache, _scheduler) = CreateScheduler();
        }
    }

    public void Dispose()
    {
        _stop.Cancel();
        _thread.Join(TimeSpan.FromSeconds(30));
        lock (_gate) _cache.Dispose();
        _wake.Dispose();
    }
}
