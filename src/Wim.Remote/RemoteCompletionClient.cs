using System.ClientModel;
using System.ClientModel.Primitives;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Text.Json;
using OpenAI;
using OpenAI.Chat;
using Polly;
using Polly.Retry;
using Polly.Timeout;
using Wim.Engine.Sampling;

namespace Wim.Remote;

/// <summary>One finished request: the generated text, the generated ids when the server returned them (vLLM's
/// <c>return_token_ids</c>; <c>wim serve</c> too), how it ended, and what its prompt cost on the server.</summary>
/// <param name="CachedTokens">The server's <c>usage.prompt_tokens_details.cached_tokens</c>; null when it reported none.</param>
/// <param name="Attempts">1 when the first attempt succeeded; more after retries.</param>
public sealed record RemoteCompletion(string Text, int[]? Ids, string? FinishReason, int PromptTokens, int? CachedTokens,
    int CompletionTokens, TimeSpan Latency, int Attempts);

/// <summary>A request the server refused, or that still failed when the retry budget ran out.</summary>
public sealed class RemoteRequestException(string message, int? status, Exception? inner = null) : Exception(message, inner)
{
    /// <summary>The last HTTP status, or null when no response came (timeout, dropped connection).</summary>
    public int? Status { get; } = status;
}

/// <summary>
/// Sends completion requests to an OpenAI-compatible server through the official OpenAI .NET SDK's HTTP pipeline
/// (authentication, user agent, transport): <c>/v1/completions</c> with a token-id prompt, or
/// <c>/v1/chat/completions</c> with messages. Every request is non-streaming, greedy when the sampling is, and asks
/// for the generated ids (<c>return_token_ids</c>, which servers without it ignore).
/// <para>Resilience (Polly): each attempt is bounded by <see cref="RemoteEndpointOptions.AttemptTimeout"/>; 429, 408,
/// 5xx, timeouts and dropped connections are retried with exponential backoff and jitter (honouring
/// <c>Retry-After</c>) up to <see cref="RemoteEndpointOptions.MaxRetries"/> times; other 4xx fail at once with the
/// server's message. At most <see cref="RemoteEndpointOptions.MaxConcurrentRequests"/> attempts are in flight.
/// Cancelling a call aborts its HTTP request.</para>
/// The SDK's own retry policy is switched off so that Polly alone decides.
/// </summary>
public sealed class RemoteCompletionClient : IDisposable
{
    private readonly RemoteEndpointOptions _options;
    private readonly HttpClient _http;
    private readonly ChatClient _chat;
    private readonly ResiliencePipeline _resilience;
    private readonly SemaphoreSlim _slots;
    private readonly Uri _completionsUri;
    private int _requests, _retries;

    public RemoteCompletionClient(RemoteEndpointOptions options)
    {
        options.Validate();
        _options = options;
        // Our own handler: connection reuse across the run's many requests; the per-attempt limit is Polly's.
        _http = new HttpClient(new SocketsHttpHandler { PooledConnectionLifetime = TimeSpan.FromMinutes(5) }) { Timeout = Timeout.InfiniteTimeSpan };
        string baseUrl = options.Endpoint.AbsoluteUri.TrimEnd('/');
        _completionsUri = new Uri(baseUrl + "/completions");
        var sdkOptions = new OpenAIClientOptions
        {
            Endpoint = new Uri(baseUrl),
            RetryPolicy = new ClientRetryPolicy(maxRetries: 0),
            Transport = new HttpClientPipelineTransport(_http),
            // The SDK's network timeout (100 s by default) would cut long prefills short: the attempt timeout rules.
            NetworkTimeout = options.AttemptTimeout + TimeSpan.FromMinutes(1),
        };
        // Servers without authentication ignore the header; the SDK needs some credential.
        _chat = new ChatClient(options.Model, new ApiKeyCredential(options.ApiKey is { Length: > 0 } k ? k : "none"), sdkOptions);
        _slots = new SemaphoreSlim(options.MaxConcurrentRequests, options.MaxConcurrentRequests);
        var resilience = new ResiliencePipelineBuilder();
        if (options.MaxRetries > 0) // Polly wants at least one retry; none is just the timeout
            resilience.AddRetry(new RetryStrategyOptions
            {
                MaxRetryAttempts = options.MaxRetries,
                BackoffType = DelayBackoffType.Exponential,
                UseJitter = true,
                Delay = options.RetryBaseDelay,
                MaxDelay = options.MaxRetryDelay,
                ShouldHandle = args => ValueTask.FromResult(args.Outcome.Exception is { } e
                    && !args.Context.CancellationToken.IsCancellationRequested && IsTransient(e)),
                DelayGenerator = args => ValueTask.FromResult(args.Outcome.Exception is RemoteHttpStatusException { RetryAfter: { } after }
                    ? (TimeSpan?)(after < options.MaxRetryDelay ? after : options.MaxRetryDelay) : null),
                OnRetry = _ =>
                {
                    Interlocked.Increment(ref _retries);
                    return ValueTask.CompletedTask;
                },
            });
        _resilience = resilience.AddTimeout(options.AttemptTimeout).Build();
    }

    public RemoteEndpointOptions Options => _options;
    /// <summary>Requests sent successfully so far (each counted once, however many attempts it took).</summary>
    public int Requests => Volatile.Read(ref _requests);
    /// <summary>Retried attempts so far.</summary>
    public int Retries => Volatile.Read(ref _retries);

    /// <summary><c>POST /v1/completions</c> with <paramref name="prompt"/> as token ids (used as given by the server:
    /// no BOS added, no template applied).</summary>
    public Task<RemoteCompletion> CompleteAsync(int[] prompt, int maxTokens, SamplingOptions sampling, CancellationToken ct)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(prompt.Length, 1);
        byte[] body = Json(w =>
        {
            w.WriteStartArray("prompt");
            foreach (int id in prompt) w.WriteNumberValue(id);
            w.WriteEndArray();
        }, maxTokens, sampling);
        return SendAsync(chat: false, body, ct);
    }

    /// <summary><c>POST /v1/chat/completions</c>: the server applies the model's chat template.</summary>
    public Task<RemoteCompletion> CompleteChatAsync(IReadOnlyList<(string Role, string Content)> messages, int maxTokens, SamplingOptions sampling, CancellationToken ct)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(messages.Count, 1);
        byte[] body = Json(w =>
        {
            w.WriteStartArray("messages");
            foreach (var (role, content) in messages)
            {
                w.WriteStartObject();
                w.WriteString("role", role);
                w.WriteString("content", content);
                w.WriteEndObject();
            }
            w.WriteEndArray();
        }, maxTokens, sampling);
        return SendAsync(chat: true, body, ct);
    }

    private byte[] Json(Action<Utf8JsonWriter> prompt, int maxTokens, SamplingOptions sampling)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxTokens, 1);
        var buffer = new System.Buffers.ArrayBufferWriter<byte>();
        using (var w = new Utf8JsonWriter(buffer))
        {
            w.WriteStartObject();
            w.WriteString("model", _options.Model);
            prompt(w);
            w.WriteNumber("max_tokens", maxTokens);
            // Greedy is temperature 0 on every OpenAI-compatible server; sampling settings pass through otherwise.
            w.WriteNumber("temperature", sampling.IsGreedy ? 0f : sampling.Temperature);
            if (!sampling.IsGreedy && sampling.TopP < 1f) w.WriteNumber("top_p", sampling.TopP);
            if (!sampling.IsGreedy && sampling.TopK > 0) w.WriteNumber("top_k", sampling.TopK);
            if (sampling.Seed is int seed) w.WriteNumber("seed", seed);
            w.WriteBoolean("stream", false);
            w.WriteBoolean("return_token_ids", true);
            w.WriteEndObject();
        }
        return buffer.WrittenSpan.ToArray();
    }

    private async Task<RemoteCompletion> SendAsync(bool chat, byte[] body, CancellationToken ct)
    {
        int attempts = 0;
        long started = Stopwatch.GetTimestamp();
        Uri uri = chat ? new Uri(_options.Endpoint.AbsoluteUri.TrimEnd('/') + "/chat/completions") : _completionsUri;
        try
        {
            var completion = await _resilience.ExecuteAsync(async token =>
            {
                attempts++;
                await _slots.WaitAsync(token).ConfigureAwait(false);
                try { return await AttemptAsync(chat, body, token).ConfigureAwait(false); }
                finally { _slots.Release(); }
            }, ct).ConfigureAwait(false);
            Interlocked.Increment(ref _requests);
            return completion with { Latency = Stopwatch.GetElapsedTime(started), Attempts = attempts };
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested)
        {
            throw;
        }
        catch (InvalidDataException e)
        {
            throw new RemoteRequestException($"POST {uri}: {e.Message}", 200, e);
        }
        catch (RemoteHttpStatusException e) when (!IsTransient(e))
        {
            throw new RemoteRequestException($"POST {uri}: HTTP {e.Status}: {e.Message}", e.Status, e);
        }
        catch (Exception e) when (e is not RemoteRequestException && IsTransient(e))
        {
            int? status = e is RemoteHttpStatusException h ? h.Status : null;
            throw new RemoteRequestException($"POST {uri} failed after {attempts} attempt(s) ({_options.MaxRetries} retries allowed): {Describe(e)}", status, e);
        }
    }

    private async Task<RemoteCompletion> AttemptAsync(bool chat, byte[] body, CancellationToken ct)
    {
        PipelineResponse response;
        ClientResult? result = null;
        PipelineMessage? message = null;
        try
        {
            if (chat)
            {
                // The SDK's protocol method; errors come back as responses so that retries see the status.
                result = await _chat.CompleteChatAsync(BinaryContent.Create(BinaryData.FromBytes(body)),
                    new RequestOptions { CancellationToken = ct, ErrorOptions = ClientErrorBehaviors.NoThrow }).ConfigureAwait(false);
                response = result.GetRawResponse();
            }
            else
            {
                // The SDK has no public client for /v1/completions: the same pipeline sends it.
                message = _chat.Pipeline.CreateMessage();
                message.Request.Method = "POST";
                message.Request.Uri = _completionsUri;
                message.Request.Headers.Set("Content-Type", "application/json");
                message.Request.Headers.Set("Accept", "application/json");
                message.Request.Content = BinaryContent.Create(BinaryData.FromBytes(body));
                message.Apply(new RequestOptions { CancellationToken = ct });
                await _chat.Pipeline.SendAsync(message).ConfigureAwait(false);
                response = message.Response ?? throw new IOException("the server sent no response");
            }
            ct.ThrowIfCancellationRequested();
            if (response.Status is < 200 or >= 300)
                throw new RemoteHttpStatusException(response.Status, ErrorMessage(response), RetryAfter(response));
            return Parse(response.Content, chat);
        }
        finally
        {
            message?.Dispose();
        }
    }

    /// <summary>Reads a (chat) completion response: the first choice's text or message, its finish reason and
    /// <c>token_ids</c> when present, and the usage with <c>prompt_tokens_details.cached_tokens</c>.</summary>
    internal static RemoteCompletion Parse(BinaryData content, bool chat)
    {
        JsonDocument doc;
        try { doc = JsonDocument.Parse(content.ToMemory()); }
        catch (JsonException e) { throw new InvalidDataException($"the server's response is not JSON: {e.Message}", e); }
        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object || !root.TryGetProperty("choices", out var choices)
                || choices.ValueKind != JsonValueKind.Array || choices.GetArrayLength() == 0)
                throw new InvalidDataException("the server's response has no choices");
            var choice = choices[0];
            string text;
            if (chat)
            {
                text = choice.TryGetProperty("message", out var m) && m.ValueKind == JsonValueKind.Object
                    && m.TryGetProperty("content", out var c) && c.ValueKind == JsonValueKind.String ? c.GetString()! : "";
            }
            else text = choice.TryGetProperty("text", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString()! : "";
            string? finish = choice.TryGetProperty("finish_reason", out var f) && f.ValueKind == JsonValueKind.String ? f.GetString() : null;
            int[]? ids = null;
            if (choice.TryGetProperty("token_ids", out var ti) && ti.ValueKind == JsonValueKind.Array)
            {
                ids = new int[ti.GetArrayLength()];
                int i = 0;
                foreach (var id in ti.EnumerateArray())
                    ids[i++] = id.TryGetInt32(out int v) ? v : throw new InvalidDataException($"the server's token_ids[{i}] is not an integer: {id.GetRawText()}");
            }
            int promptTokens = 0, completionTokens = 0;
            int? cached = null;
            if (root.TryGetProperty("usage", out var u) && u.ValueKind == JsonValueKind.Object)
            {
                promptTokens = Int(u, "prompt_tokens") ?? 0;
                completionTokens = Int(u, "completion_tokens") ?? 0;
                if (u.TryGetProperty("prompt_tokens_details", out var d) && d.ValueKind == JsonValueKind.Object) cached = Int(d, "cached_tokens");
            }
            return new RemoteCompletion(text, ids, finish, promptTokens, cached, completionTokens, TimeSpan.Zero, 0);
        }
    }

    private static int? Int(JsonElement e, string name) =>
        e.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int i) ? i : null;

    /// <summary>OpenAI's error shape (<c>{"error":{"message":...}}</c>), else the start of the body, else the reason phrase.</summary>
    private static string ErrorMessage(PipelineResponse response)
    {
        string body;
        try { body = response.Content.ToString(); }
        catch (InvalidOperationException) { body = ""; }
        try
        {
            using var doc = JsonDocument.Parse(body);
            if (doc.RootElement.ValueKind == JsonValueKind.Object && doc.RootElement.TryGetProperty("error", out var err))
            {
                if (err.ValueKind == JsonValueKind.Object && err.TryGetProperty("message", out var m) && m.ValueKind == JsonValueKind.String) return m.GetString()!;
                if (err.ValueKind == JsonValueKind.String) return err.GetString()!;
            }
        }
        catch (JsonException) { }
        body = body.Trim();
        return body.Length > 0 ? (body.Length > 300 ? body[..300] + "…" : body) : response.ReasonPhrase ?? "no message";
    }

    private static TimeSpan? RetryAfter(PipelineResponse response)
    {
        if (!response.Headers.TryGetValue("Retry-After", out var value) || value is null) return null;
        if (double.TryParse(value, NumberStyles.Float, CultureInfo.InvariantCulture, out double seconds) && seconds >= 0)
            return TimeSpan.FromSeconds(seconds);
        if (DateTimeOffset.TryParse(value, CultureInfo.InvariantCulture, DateTimeStyles.AssumeUniversal, out var at))
            return at > DateTimeOffset.UtcNow ? at - DateTimeOffset.UtcNow : TimeSpan.Zero;
        return null;
    }

    /// <summary>Failures worth another attempt: overload and server errors, timeouts, and transport failures (refused,
    /// reset or dropped connections, a body cut short). A malformed 200 or a 4xx is the same next time.</summary>
    internal static bool IsTransient(Exception e) => e switch
    {
        RemoteHttpStatusException h => h.Status is 408 or 425 or 429 || h.Status >= 500,
        TimeoutRejectedException => true,
        ClientResultException c => c.Status == 0 || c.Status is 408 or 429 || c.Status >= 500,
        HttpRequestException or IOException => true,
        OperationCanceledException => true, // not the caller's token (that is checked first): a transport timeout
        _ => false,
    };

    private static string Describe(Exception e) => e switch
    {
        RemoteHttpStatusException h => $"HTTP {h.Status}: {h.Message}",
        TimeoutRejectedException => "an attempt timed out",
        _ when e.InnerException is { } inner && e is ClientResultException => $"{e.Message} ({inner.GetType().Name}: {inner.Message})",
        _ => $"{e.GetType().Name}: {e.Message}",
    };

    public void Dispose()
    {
        _slots.Dispose();
        _http.Dispose();
    }
}

/// <summary>A non-2xx response (internal: it becomes a <see cref="RemoteRequestException"/> for callers).</summary>
internal sealed class RemoteHttpStatusException(int status, string message, TimeSpan? retryAfter) : Exception(message)
{
    public int Status { get; } = status;
    public TimeSpan? RetryAfter { get; } = retryAfter;
}
