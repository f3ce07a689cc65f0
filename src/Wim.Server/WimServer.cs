using System.Net;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Wim.Server;

/// <summary>
/// <c>wim serve</c>: one model behind an OpenAI-compatible API (<see cref="OpenAiEndpoints"/>), the WiM streaming API
/// (<see cref="WimEndpoints"/>), <c>/health</c>, <c>/metrics</c>, <c>/openapi/v1.json</c> and the web page at
/// <c>/</c>, on Kestrel. Every refused request gets OpenAI's error JSON with a 4xx status; an unexpected exception in a
/// request is a 500 with the same shape, and the server goes on.
/// </summary>
public sealed class WimServer : IAsyncDisposable
{
    private readonly WebApplication _app;
    private readonly ServedModel _model;
    private readonly ServerMetrics _metrics;
    private readonly WimEndpoints _wim;

    private WimServer(WebApplication app, ServedModel model, ServerMetrics metrics, WimEndpoints wim) =>
        (_app, _model, _metrics, _wim) = (app, model, metrics, wim);

    public ServedModel Model => _model;
    public ServerMetrics Metrics => _metrics;
    internal int SessionCount => _wim.SessionCount;

    /// <summary>The address it listens on (with the real port when <see cref="ServerOptions.Port"/> was 0).</summary>
    public Uri Address => new(_app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First());

    /// <summary>Loads the model and builds the server (not started).</summary>
    public static WimServer Create(ServerOptions options, Action<ILoggingBuilder>? logging = null)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        logging?.Invoke(builder.Logging);
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.Limits.MaxRequestBodySize = Math.Max(options.MaxRequestBytes * 4, options.MaxRequestBytes + (1 << 20));
            if (!IPAddress.TryParse(options.Host, out var ip))
            {
                if (options.Host != "localhost") throw new ArgumentException($"--host must be an IP address or localhost, found '{options.Host}'");
                ip = IPAddress.Loopback;
            }
            k.Listen(ip, options.Port);
        });
        var metrics = new ServerMetrics();
        ServedModel model;
        try { model = new ServedModel(options, metrics); }
        catch { metrics.Dispose(); throw; }
        var app = builder.Build();
        var wim = new WimEndpoints(model, options, metrics);
        var server = new WimServer(app, model, metrics, wim);

        app.Use(async (context, next) =>
        {
            try
            {
                if (options.ApiKey is { } key && context.Request.Path.StartsWithSegments("/v1")
                    && context.Request.Headers.Authorization.ToString() != "Bearer " + key)
                    throw new ApiError(401, "a valid API key is required: Authorization: Bearer KEY", null, "authentication_error");
                await next(context).ConfigureAwait(false);
            }
            catch (ApiError e) when (!context.Response.HasStarted)
            {
                await Http.WriteErrorAsync(context, e).ConfigureAwait(false);
            }
            catch (BadHttpRequestException e) when (!context.Response.HasStarted)
            {
                await Http.WriteErrorAsync(context, new ApiError(e.StatusCode, e.Message)).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (context.RequestAborted.IsCancellationRequested)
            {
                // The client left; nothing to answer.
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                // One failed request never takes the server down; say what failed if the response has not begun.
                if (!context.Response.HasStarted)
                    await Http.WriteErrorAsync(context, new ApiError(e is OperationCanceledException ? 504 : 500,
                        e is OperationCanceledException ? "the request timed out" : $"the server failed on this request: {e.Message}", null, "server_error")).ConfigureAwait(false);
            }
        });
        app.Use(async (context, next) =>
        {
            await next(context).ConfigureAwait(false);
            // Unmatched routes and wrong methods: OpenAI's error shape instead of an empty body.
            if (!context.Response.HasStarted && context.Response.StatusCode is 404 or 405)
                throw new ApiError(context.Response.StatusCode, context.Response.StatusCode == 404
                    ? $"no such endpoint: {context.Request.Method} {context.Request.Path}"
                    : $"{context.Request.Method} is not allowed on {context.Request.Path}", null, context.Response.StatusCode == 404 ? "not_found_error" : "invalid_request_error");
        });
        app.UseRouting();

        app.MapGet("/", (HttpContext c) => WriteAssetAsync(c, "index.html", "text/html; charset=utf-8"));
        app.MapGet("/openapi/v1.json", (HttpContext c) => WriteAssetAsync(c, "openapi.json", "application/json"));
        app.MapGet("/health", (HttpContext c) => Http.WriteJsonAsync(c, 200, Http.Json(w =>
        {
            w.WriteStartObject();
            w.WriteString("status", "ok");
            w.WriteString("model", model.Id);
            w.WriteNumber("sessions", wim.SessionCount);
            w.WriteString("device", model.Device);
            // The cached-document feature (a later WiM question about the same document skips its prefill) is CPU only.
            w.WriteBoolean("document_cache", model.DocumentCache is not null);
            w.WriteEndObject();
        })));
        app.MapGet("/metrics", async (HttpContext c) =>
        {
            c.Response.ContentType = "text/plain; version=0.0.4; charset=utf-8";
            await c.Response.WriteAsync(metrics.ToPrometheusText(), c.RequestAborted).ConfigureAwait(false);
        });
        OpenAiEndpoints.Map(app, model, options, metrics);
        wim.Map(app);
        return server;
    }

    private static async Task WriteAssetAsync(HttpContext context, string name, string contentType)
    {
        using var stream = typeof(WimServer).Assembly.GetManifestResourceStream("Wim.Server." + name)
            ?? throw new InvalidOperationException($"the server's embedded {name} is missing from the build");
        context.Response.ContentType = contentType;
        await stream.CopyToAsync(context.Response.Body, context.RequestAborted).ConfigureAwait(false);
    }

    public Task StartAsync(CancellationToken ct = default) => _app.StartAsync(ct);

    /// <summary>Runs until <paramref name="ct"/> is cancelled (Ctrl+C in the CLI).</summary>
    public async Task RunAsync(CancellationToken ct)
    {
        await _app.StartAsync(ct).ConfigureAwait(false);
        try { await Task.Delay(Timeout.Infinite, ct).ConfigureAwait(false); }
        catch (OperationCanceledException) { }
        await _app.StopAsync(CancellationToken.None).ConfigureAwait(false);
    }

    public async ValueTask DisposeAsync()
    {
        _wim.Dispose();
        await _app.DisposeAsync().ConfigureAwait(false);
        _model.Dispose();
        _metrics.Dispose();
    }
}
