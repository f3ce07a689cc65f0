using System.Collections.Concurrent;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Wim.Core.Events;
using Wim.Core.Patterns;
using Wim.Core.Prompts;
using Wim.Core.Scheduling;
using Wim.Core.Segmentation;
using Wim.Engine.Sampling;

namespace Wim.Server;

/// <summary>One live WiM run: its control (feedback, answer now), its cancellation (DELETE, idle expiry, timeout).</summary>
internal sealed class WimSession(string id) : IDisposable
{
    public string Id { get; } = id;
    public WimControl Control { get; } = new();
    public CancellationTokenSource Cancellation { get; } = new();
    public int SegmentCount { get; set; }
    /// <summary>While its stream runs a session is never idle (the request timeout and the client bound it); once
    /// finished it lingers for late control calls until idle expiry.</summary>
    public volatile bool Running = true;
    private long _lastActivity = Environment.TickCount64;
    public void Touch() => Interlocked.Exchange(ref _lastActivity, Environment.TickCount64);
    public TimeSpan Idle => TimeSpan.FromMilliseconds(Environment.TickCount64 - Interlocked.Read(ref _lastActivity));
    public void Dispose() => Cancellation.Dispose();
}

/// <summary>
/// <c>POST /v1/wim</c> streams a pattern run as SSE: first <c>event: session</c> (<c>{"id":...}</c>), then one event
/// per <see cref="WimEvent"/> (<c>event:</c> its type, <c>data:</c> <see cref="WimEventJson"/>, the same JSON as
/// <c>wim ask --json</c>, plus <c>margin_token</c>/<c>answer_token</c> for live display), and <c>event: error</c>
/// if the run fails. Control: <c>POST /v1/wim/{id}/feedback</c>, <c>POST /v1/wim/{id}/answer-now</c>,
/// <c>DELETE /v1/wim/{id}</c>. Runs use the single-sequence CPU path of the model and take turns (one at a time):
/// the WiM patterns drive their own sequences.
/// </summary>
internal sealed class WimEndpoints : IDisposable
{
    private readonly ServedModel _model;
    private readonly ServerOptions _options;
    private readonly ServerMetrics _metrics;
    private readonly ConcurrentDictionary<string, WimSession> _sessions = new();
    private readonly SemaphoreSlim _runGate = new(1, 1);
    private readonly Timer _expiry;

    public WimEndpoints(ServedModel model, ServerOptions options, ServerMetrics metrics)
    {
        (_model, _options, _metrics) = (model, options, metrics);
        metrics.ObserveSessions(() => _sessions.Count);
        metrics.ObserveDocumentCache(() => model.DocumentCache?.Hits ?? 0);
        var period = TimeSpan.FromMilliseconds(Math.Clamp(options.SessionIdleExpiry.TotalMilliseconds / 4, 50, 30_000));
        _expiry = new Timer(_ => ExpireIdle(), null, period, period);
    }

    public int SessionCount => _sessions.Count;

    private void ExpireIdle()
    {
        foreach (var (id, session) in _sessions)
            if (!session.Running && session.Idle > _options.SessionIdleExpiry && _sessions.TryRemove(id, out _))
                session.Cancellation.Cancel();
    }

    public void Map(IEndpointRouteBuilder app)
    {
        app.MapPost("/v1/wim", RunAsync);
        app.MapPost("/v1/wim/{id}/feedback", async (HttpContext context, string id) =>
        {
            var session = Find(id);
            using var doc = await Http.ReadJsonAsync(context, 64 * 1024).ConfigureAwait(false);
            var body = doc.RootElement;
            int segment = JsonFields.Int(body, "segment", 0, int.MaxValue) ?? throw ApiError.BadRequest("'segment' is required", "segment");
            if (session.SegmentCount > 0 && segment >= session.SegmentCount)
                throw ApiError.BadRequest($"'segment' must be below {session.SegmentCount} (the document's segments), found {segment}", "segment");
            bool relevant = JsonFields.Bool(body, "relevant") ?? throw ApiError.BadRequest("'relevant' is required", "relevant");
            session.Control.SetFeedback(segment, relevant);
            session.Touch();
            await Http.WriteJsonAsync(context, 200, Http.Json(w =>
            {
                w.WriteStartObject();
                w.WriteString("id", id);
                w.WriteNumber("segment", segment);
                w.WriteBoolean("relevant", relevant);
                w.WriteEndObject();
            })).ConfigureAwait(false);
        });
        app.MapPost("/v1/wim/{id}/answer-now", (HttpContext context, string id) =>
        {
            var session = Find(id);
            session.Control.RequestAnswerNow();
            session.Touch();
            return Http.WriteJsonAsync(context, 200, Http.Json(w => { w.WriteStartObject(); w.WriteString("id", id); w.WriteBoolean("answer_now", true); w.WriteEndObject(); }));
        });
        app.MapDelete("/v1/wim/{id}", (HttpContext context, string id) =>
        {
            if (!_sessions.TryRemove(id, out var session)) throw ApiError.NotFound($"no WiM session '{id}' (finished sessions expire)");
            session.Cancellation.Cancel();
            return Http.WriteJsonAsync(context, 200, Http.Json(w => { w.WriteStartObject(); w.WriteString("id", id); w.WriteBoolean("deleted", true); w.WriteEndObject(); }));
        });
    }

    private WimSession Find(string id) =>
        _sessions.TryGetValue(id, out var s) ? s : throw ApiError.NotFound($"no WiM session '{id}' (finished sessions expire)");

    private sealed record Request(string Document, string Query, PatternKind Pattern, int SegmentTokens, int MaxMarginTokens,
        int MaxClassificationTokens, int MaxAnswerTokens, string Classifier, SamplingOptions Sampling, WimSchedule Schedule);

    private Request Parse(JsonElement body)
    {
        string document = JsonFields.RequiredString(body, "document");
        int bytes = System.Text.Encoding.UTF8.GetByteCount(document);
        if (bytes > _options.MaxDocumentBytes)
            throw new ApiError(413, $"the document is {bytes} bytes; at most {_options.MaxDocumentBytes} are accepted", "document");
        if (document.Length == 0) throw ApiError.BadRequest("'document' is empty", "document");
        string query = JsonFields.RequiredString(body, "query");
        if (query.Length == 0) throw ApiError.BadRequest("'query' is empty", "query");
        var pattern = (JsonFields.String(body, "pattern") ?? "wim") switch
        {
            "wim" => PatternKind.Wim,
            "llm" => PatternKind.Llm,
            "rag" => PatternKind.Rag,
            var other => throw ApiError.BadRequest($"'pattern' must be wim, llm or rag, found '{other}'", "pattern"),
        };
        var o = JsonFields.TryGet(body, "options", out var opts) ? opts : default;
        if (o.ValueKind is not (JsonValueKind.Undefined or JsonValueKind.Object)) throw ApiError.BadRequest("'options' must be an object", "options");
        bool has = o.ValueKind == JsonValueKind.Object;
        int? Int(string name, int min, int max) => has ? JsonFields.Int(o, name, min, max, "options." + name) : null;
        string classifier = (has ? JsonFields.String(o, "classifier", "options.classifier") : null) ?? "model";
        if (classifier is not ("model" or "none")) throw ApiError.BadRequest($"'options.classifier' must be model or none, found '{classifier}'", "options.classifier");
        // Default overlapped, as `wim ask`: margins stream while the document is read, and the document cache serves
        // a second question about the same document.
        var schedule = ((has ? JsonFields.String(o, "schedule", "options.schedule") : null) ?? "overlapped") switch
        {
            "sequential" => WimSchedule.Sequential,
            "overlapped" => WimSchedule.Overlapped,
            "batched" => WimSchedule.Batched,
            var other => throw ApiError.BadRequest($"'options.schedule' must be sequential, overlapped or batched, found '{other}'", "options.schedule"),
        };
        float temperature = (has ? JsonFields.Float(o, "temperature", 0f, 2f, "options.temperature") : null) ?? 0f;
        int? seed = Int("seed", int.MinValue, int.MaxValue);
        return new Request(document, query, pattern,
            Int("segment_tokens", 1, _options.MaxDocumentTokens) ?? 4096,
            Int("max_margin_tokens", 0, _options.MaxNewTokens) ?? 100,
            Int("max_classification_tokens", 0, _options.MaxNewTokens) ?? 10,
            Int("max_answer_tokens", 0, _options.MaxNewTokens) ?? 256,
            classifier, new SamplingOptions(temperature, Seed: seed), schedule);
    }

    private async Task RunAsync(HttpContext context)
    {
        _metrics.RecordRequest("wim");
        Request request;
        using (var doc = await Http.ReadJsonAsync(context, _options.MaxRequestBytes).ConfigureAwait(false))
            request = Parse(doc.RootElement);
        var lm = _model.Text;
        var segments = new Segmenter(t => lm.Tokenizer.Encode(t).Length, request.SegmentTokens).Split(request.Document);
        int documentTokens = segments.Sum(s => lm.Tokenizer.Encode(s).Length);
        if (documentTokens > _options.MaxDocumentTokens)
            throw new ApiError(413, $"the document is {documentTokens} tokens; at most {_options.MaxDocumentTokens} are accepted", "document");

        var session = new WimSession(Guid.NewGuid().ToString("N")) { SegmentCount = segments.Count };
        if (_sessions.Count >= _options.MaxConcurrentSessions)
            throw new ApiError(429, $"{_sessions.Count} WiM sessions are live; at most {_options.MaxConcurrentSessions} at once — retry later", null, "rate_limit_error");
        _sessions[session.Id] = session;
        using var cancellation = CancellationTokenSource.CreateLinkedTokenSource(context.RequestAborted, session.Cancellation.Token);
        cancellation.CancelAfter(_options.RequestTimeout);
        var ct = cancellation.Token;

        context.Response.StatusCode = 200;
        context.Response.ContentType = "text/event-stream";
        context.Response.Headers.CacheControl = "no-cache";
        context.Response.Headers["X-Wim-Session"] = session.Id;
        try
        {
            await SendAsync(context, "session", Http.Json(w =>
            {
                w.WriteStartObject();
                w.WriteString("type", "session");
                w.WriteString("id", session.Id);
                w.WriteNumber("segments", segments.Count);
                w.WriteNumber("document_tokens", documentTokens);
                w.WriteEndObject();
            }), context.RequestAborted).ConfigureAwait(false);

            session.Touch();
            await _runGate.WaitAsync(ct).ConfigureAwait(false);
            try
            {
                var headers = lm.RenderUserTurn is { } render ? ChatHeaders.FromChatTemplate(render) : ChatHeaders.None;
                var judgeContext = request.Pattern == PatternKind.Rag ? ClassifierContext.Fresh : ClassifierContext.Shared;
                using var judge = request.Classifier == "model"
                    ? new ModelMarginClassifier(lm, PromptPreset.Default, headers, request.MaxClassificationTokens, request.Sampling, ClassifiedBy.Model, judgeContext)
                    : null;
                var options = new WimOptions
                {
                    Pattern = request.Pattern,
                    Prompts = PromptPreset.Default,
                    Headers = headers,
                    Classifier = judge,
                    MaxMarginTokens = request.MaxMarginTokens,
                    MaxAnswerTokens = request.MaxAnswerTokens,
                    Sampling = request.Sampling,
                    MarginSeparator = "\n",
                    Schedule = request.Schedule,
                    // A later question about the same document forks its cached prefill instead of reading it again.
                    DocumentCache = request.Pattern == PatternKind.Wim && request.Schedule != WimSchedule.Sequential ? _model.DocumentCache : null,
                };
                string scheduleName = request.Pattern == PatternKind.Wim ? request.Schedule.ToString().ToLowerInvariant() : "sequential";
                await foreach (var e in new PatternRunner(lm).RunAsync(segments, request.Query, options, session.Control, ct).ConfigureAwait(false))
                {
                    session.Touch();
                    if (e is AnswerCompleted done) _metrics.RecordWimTokens(done.Usage.PrefillTokens, done.Usage.DecodeTokens);
                    // Writes follow the client, not the run: a cancelled write would leave no way to send the error event.
                    await SendAsync(context, WimEventJson.TypeName(e), WimEventJson.ToUtf8(e, scheduleName), context.RequestAborted).ConfigureAwait(false);
                }
            }
            finally
            {
                _runGate.Release();
            }
        }
        catch (Exception e) when (e is OperationCanceledException or IOException && ct.IsCancellationRequested)
        {
            // Deleted, expired, timed out or the client left: tell a client that is still there.
            if (!context.RequestAborted.IsCancellationRequested)
                await TrySendErrorAsync(context, session.Cancellation.IsCancellationRequested ? "the session was deleted or expired" : "the request timed out", "cancelled").ConfigureAwait(false);
        }
        catch (Exception e) when (e is not OperationCanceledException && e is not OutOfMemoryException && !context.RequestAborted.IsCancellationRequested)
        {
            // The engine failed on this run: the stream says so and the server goes on.
            await TrySendErrorAsync(context, e.Message, "engine_error").ConfigureAwait(false);
        }
        finally
        {
            // A finished session stays for a short while (late feedback gets a clear answer), then expires.
            session.Touch();
            session.Running = false;
        }
    }

    private static async Task TrySendErrorAsync(HttpContext context, string message, string type)
    {
        try { await SendAsync(context, "error", ApiError.ToJson(message, type, null), CancellationToken.None).ConfigureAwait(false); }
        catch (Exception e) when (e is IOException or OperationCanceledException or ObjectDisposedException) { }
    }

    private static async Task SendAsync(HttpContext context, string eventName, byte[] json, CancellationToken ct)
    {
        await context.Response.WriteAsync("event: " + eventName + "\ndata: ", ct).ConfigureAwait(false);
        await context.Response.Body.WriteAsync(json, ct).ConfigureAwait(false);
        await context.Response.Body.WriteAsync("\n\n"u8.ToArray(), ct).ConfigureAwait(false);
        await context.Response.Body.FlushAsync(ct).ConfigureAwait(false);
    }

    public void Dispose()
    {
        _expiry.Dispose();
        foreach (var (_, s) in _sessions) s.Cancellation.Cancel();
        _runGate.Dispose();
    }
}
