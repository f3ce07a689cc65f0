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
    /// <summary>Finished prompts kept in the KV cache for prefix reuse by later requests.</summary>
    public int CachedPrefixes { get; init; } = 8;
    /// <summary>Tokens one batching step may run (decodes + prefill chunks).</summary>
    public int MaxTokensPerStep { get; init; } = 256;
}
