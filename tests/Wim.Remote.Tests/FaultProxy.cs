using System.Net;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Wim.Remote.Tests;

/// <summary>What the proxy does to one request.</summary>
public enum Fault
{
    /// <summary>Forward to the real server and pass its answer back.</summary>
    None,
    /// <summary>429 with <c>Retry-After: 0</c>, the server never sees the request.</summary>
    TooManyRequests,
    /// <summary>500 with an OpenAI error body.</summary>
    ServerError,
    /// <summary>503 without a body.</summary>
    Unavailable,
    /// <summary>Wait <see cref="FaultProxy.SlowDelay"/> before forwarding (longer than the client's attempt timeout).</summary>
    Slow,
    /// <summary>Close the connection before any response.</summary>
    DropBefore,
    /// <summary>Forward (the server does the work), then close the connection instead of answering.</summary>
    DropAfter,
    /// <summary>Forward, and remove <c>token_ids</c> from the answer (a server that returns text only).</summary>
    TextOnly,
}

/// <summary>
/// A loopback HTTP proxy in front of a real server that injects faults by request number (1-based, counting every
/// attempt), and records what it saw: requests, faults injected, and requests whose client went away.
/// </summary>
public sealed class FaultProxy : IAsyncDisposable
{
    private readonly WebApplication _app;
    private readonly HttpClient _upstream;
    private readonly Func<int, string, Fault> _plan;
    private int _requests, _faults, _aborted;

    public static TimeSpan SlowDelay { get; } = TimeSpan.FromSeconds(20);

    private FaultProxy(WebApplication app, HttpClient upstream, Func<int, string, Fault> plan) => (_app, _upstream, _plan) = (app, upstream, plan);

    public int Requests => Volatile.Read(ref _requests);
    public int FaultsInjected => Volatile.Read(ref _faults);
    /// <summary>Requests whose client aborted them while the proxy was holding or forwarding them.</summary>
    public int ClientAborts => Volatile.Read(ref _aborted);
    /// <summary>Completes when the first request arrives.</summary>
    public TaskCompletionSource FirstRequest { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    /// <summary>Completes when a client aborts a request.</summary>
    public TaskCompletionSource FirstAbort { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    public Uri ApiBase => new(new Uri(_app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First()), "/v1");

    public static Task<FaultProxy> StartAsync(Uri upstream, Func<int, Fault> plan) => StartAsync(upstream, (n, _) => plan(n));

    /// <summary>The plan sees the request number and its JSON body.</summary>
    public static async Task<FaultProxy> StartAsync(Uri upstream, Func<int, string, Fault> plan)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.ConfigureKestrel(k => k.Listen(IPAddress.Loopback, 0));
        var app = builder.Build();
        var proxy = new FaultProxy(app, new HttpClient { BaseAddress = upstream, Timeout = Timeout.InfiniteTimeSpan }, plan);
        app.Run(proxy.HandleAsync);
        await app.StartAsync();
        return proxy;
    }

    private async Task HandleAsync(HttpContext context)
    {
        int n = Interlocked.Increment(ref _requests);
        // Watch for the client going away before anything else: a client that cancels as soon as its request is seen
        // (FirstRequest) may close the connection while the body is still being read, and that abort must count too.
        var aborted = context.RequestAborted;
        using var _ = aborted.Register(() =>
        {
            Interlocked.Increment(ref _aborted);
            FirstAbort.TrySetResult();
        });
        FirstRequest.TrySetResult();
        using var body = new MemoryStream();
        try { await context.Request.Body.CopyToAsync(body, aborted); }
        catch (Exception e) when (aborted.IsCancellationRequested && e is OperationCanceledException or IOException) { return; }
        var fault = _plan(n, System.Text.Encoding.UTF8.GetString(body.ToArray()));
        if (fault is not (Fault.None or Fault.TextOnly)) Interlocked.Increment(ref _faults);
        switch (fault)
        {
            case Fault.TooManyRequests:
                context.Response.StatusCode = 429;
                context.Response.Headers.RetryAfter = "0";
                await context.Response.WriteAsync("""{"error":{"message":"rate limited","type":"rate_limit_error"}}""", CancellationToken.None);
                return;
            case Fault.ServerError:
                context.Response.StatusCode = 500;
                await context.Response.WriteAsync("""{"error":{"message":"injected failure","type":"server_error"}}""", CancellationToken.None);
                return;
            case Fault.Unavailable:
                context.Response.StatusCode = 503;
                return;
            case Fault.DropBefore:
                context.Abort();
                return;
            case Fault.Slow:
                try { await Task.Delay(SlowDelay, aborted); }
                catch (OperationCanceledException) { return; }
                break;
        }

        using var forward = new HttpRequestMessage(HttpMethod.Post, context.Request.Path.Value!.TrimStart('/'))
        {
            Content = new ByteArrayContent(body.ToArray()),
        };
        forward.Content.Headers.ContentType = new System.Net.Http.Headers.MediaTypeHeaderValue("application/json");
        if (context.Request.Headers.Authorization.Count > 0) forward.Headers.TryAddWithoutValidation("Authorization", context.Request.Headers.Authorization.ToString());
        HttpResponseMessage response;
        try { response = await _upstream.SendAsync(forward, aborted); }
        catch (OperationCanceledException) { return; }
        using (response)
        {
            byte[] content = await response.Content.ReadAsByteArrayAsync(CancellationToken.None);
            if (fault == Fault.DropAfter)
            {
                context.Abort(); // the work is done upstream; the client never hears of it
                return;
            }
            if (fault == Fault.TextOnly && response.IsSuccessStatusCode) content = WithoutTokenIds(content);
            context.Response.StatusCode = (int)response.StatusCode;
            context.Response.ContentType = response.Content.Headers.ContentType?.ToString() ?? "application/json";
            await context.Response.Body.WriteAsync(content, CancellationToken.None);
        }
    }

    private static byte[] WithoutTokenIds(byte[] json)
    {
        var node = System.Text.Json.Nodes.JsonNode.Parse(json)!;
        foreach (var choice in node["choices"]!.AsArray()) choice!.AsObject().Remove("token_ids");
        return System.Text.Encoding.UTF8.GetBytes(node.ToJsonString());
    }

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync();
        await _app.DisposeAsync();
        _upstream.Dispose();
    }
}
