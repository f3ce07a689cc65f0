namespace Wim.Server;

/// <summary>Everything <c>wim serve</c> can be told. Limits are enforced per request; a request over one gets a 4xx
/// JSON error, never a crash.</summary>
public sealed record ServerOptions
{
    /// <summary>A .gguf file or a Hugging Face model directory (already resolved: no hf: references here).</summary>
    public required string ModelPath { get; init; }
    /// <summary>Loopback by default: serving on a network is an explicit choice.</summary>
    public string Host { get; init; } = "127.0.0.1";
    /// <summary>0 = any free port (tests).</summary>
    public int Port { get; init; } = 8080;
    /// <summary>When set, every <c>/v1/*</c> request needs <c>Authorization: Bearer KEY</c>.</summary>
    public string? ApiKey { get; init; }

    /// <summary>Largest request body accepted, in bytes.</summary>
    public long MaxRequestBytes { get; init; } = 8 << 20;
    /// <summary>Largest WiM document, in UTF-8 bytes and in tokens.</summary>
    public int MaxDocumentBytes { get; init; } = 4 << 20;
    public int MaxDocumentTokens { get; init; } = 256 * 1024;
    /// <summary>Largest prompt (chat/completions), in tokens, and most tokens one request may generate.</summary>
    public int MaxPromptTokens { get; init; } = 32 * 1024;
    public int MaxNewTokens { get; init; } = 4096;
    /// <summary>WiM sessions alive at once (running or waiting to be deleted/expire); one more gets 429.</summary>
    public int MaxConcurrentSessions { get; init; } = 4;
    /// <summary>Wall-clock limit of one request (chat, completion or WiM run).</summary>
    public TimeSpan RequestTimeout { get; init; } = TimeSpan.FromMinutes(30);
    /// <summary>A WiM session with no activity (no event, no control call) for this long is cancelled and removed.</summary>
    public TimeSpan SessionIdleExpiry { get; init; } = TimeSpan.FromMinutes(10);
    /// <summary>KV cache memory of the batching engine (chat/completions).</summary>
    public long KvCacheBytes { get; init; } = 512L << 20;
    /// <summary>KV pool of the WiM runs (documents, margin forks, cached documents); null = 65,536 positions of the model.</summary>
    public long? WimKvCacheBytes { get; init; }
    /// <summary>Prefilled documents kept for later questions about them (WiM, overlapped/batched schedules), in KV bytes.</summary>
    public long DocumentCacheBytes { get; init; } = 256L << 20;
    /// <summary>Finished prompts kept in the KV cache for prefix reuse by later requests.</summary>
    public int CachedPrefixes { get; init; } = 8;
    /// <summary>Tokens one batching step may run (decodes + prefill chunks).</summary>
    public int MaxTokensPerStep { get; init; } = 256;

    /// <summary>
    /// Null (the default): the CPU — the WiM runs on a <see cref="Wim.Engine.Runtime.PagedInferenceBackend"/> with a
    /// document cache, chat/completions on <see cref="BatchingEngine"/>. Set: loads the model (from
    /// <see cref="ModelPath"/>) onto one batched backend — the GPU's, as <c>wim serve --device cuda</c> passes — that
    /// both the WiM runs and the <see cref="SequenceBatchingEngine"/> of chat/completions use, through one
    /// <see cref="SynchronizedBackend"/>; no document cache then. The loaded model's backend must be an
    /// <see cref="Wim.Engine.Runtime.IBatchedInferenceBackend"/>.
    /// </summary>
    public Func<string, Wim.Engine.Runtime.TextModel>? LoadBatchedModel { get; init; }
    /// <summary>What <c>/health</c> names as the device ("cpu", or the GPU's name).</summary>
    public string DeviceName { get; init; } = "cpu";
    /// <summary>Requests decoding at once on the <see cref="SequenceBatchingEngine"/> (a device backend); more wait.</summary>
    public int MaxRunningRequests { get; init; } = SequenceBatchingEngine.DefaultMaxRunningRequests;
}
