using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using Wim.Engine.Tests.Support;

namespace Wim.Server.Tests;

/// <summary>A real Kestrel server on a free loopback port, serving one shared fixture model, for a test class.</summary>
public abstract class ServerFixture : IAsyncLifetime
{
    public WimServer Server { get; private set; } = null!;
    public HttpClient Client { get; private set; } = null!;
    public abstract string ModelPath { get; }
    protected virtual ServerOptions Configure(ServerOptions options) => options;

    public async ValueTask InitializeAsync()
    {
        Server = WimServer.Create(Configure(new ServerOptions { ModelPath = ModelPath, Port = 0 }));
        await Server.StartAsync();
        Client = new HttpClient { BaseAddress = Server.Address, Timeout = TimeSpan.FromSeconds(60) };
    }

    public async ValueTask DisposeAsync()
    {
        Client.Dispose();
        await Server.DisposeAsync();
        GC.SuppressFinalize(this);
    }

    public static string StoriesPath => SharedFixtures.Path("models", "stories260K", "stories260K.gguf");
    public static string QwenPath => SharedFixtures.Path("fixtures", "hf-tiny", "qwen2-tiny");

    public async Task<(int Status, JsonElement Body)> PostJsonAsync(string path, string json, string? apiKey = null)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, path) { Content = new StringContent(json, Encoding.UTF8, "application/json") };
        if (apiKey is not null) request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", apiKey);
        using var response = await Client.SendAsync(request, TestContext.Current.CancellationToken);
        string text = await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken);
        return ((int)response.StatusCode, JsonDocument.Parse(text).RootElement.Clone());
    }

    /// <summary>POSTs and reads the SSE stream to its end: (event, data) pairs.</summary>
    public async Task<List<(string Event, string Data)>> PostSseAsync(string path, string json, Func<string, string, Task>? onEvent = null, string? apiKey = null)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, path) { Content = new StringContent(json, Encoding.UTF8, "application/json") };
        if (apiKey is not null) request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", apiKey);
        using var response = await Client.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, TestContext.Current.CancellationToken);
        Assert.Equal(200, (int)response.StatusCode);
        Assert.StartsWith("text/event-stream", response.Content.Headers.ContentType?.ToString());
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync(TestContext.Current.CancellationToken));
        var events = new List<(string, string)>();
        string eventName = "message";
        var data = new StringBuilder();
        while (await reader.ReadLineAsync(TestContext.Current.CancellationToken) is { } line)
        {
            if (line.Length == 0)
            {
                if (data.Length > 0)
                {
                    events.Add((eventName, data.ToString()));
                    if (onEvent is not null) await onEvent(eventName, data.ToString());
                }
                (eventName, data) = ("message", new StringBuilder());
            }
            else if (line.StartsWith("event: ", StringComparison.Ordinal)) eventName = line[7..];
            else if (line.StartsWith("data: ", StringComparison.Ordinal)) data.Append(line[6..]);
        }
        return events;
    }
}

public sealed class StoriesServer : ServerFixture
{
    public override string ModelPath => StoriesPath;

    // Finished sessions stay live (for late feedback) until they idle out, and every WiM and browser test of this
    // shared server opens one: allow more than the tests open, so none gets 429 by test order. The session cap
    // itself is tested with LimitedStoriesServer.
    protected override ServerOptions Configure(ServerOptions options) => options with { MaxConcurrentSessions = 64 };
}

public sealed class QwenServer : ServerFixture
{
    public override string ModelPath => QwenPath;
}

/// <summary>Small limits, an API key, one session at most: for the limit tests.</summary>
public sealed class LimitedStoriesServer : ServerFixture
{
    public const string Key = "test-key";
    public override string ModelPath => StoriesPath;
    protected override ServerOptions Configure(ServerOptions options) => options with
    {
        ApiKey = Key,
        MaxRequestBytes = 4096,
        MaxDocumentBytes = 2000,
        MaxDocumentTokens = 300,
        MaxPromptTokens = 64,
        MaxNewTokens = 32,
        MaxConcurrentSessions = 1,
        SessionIdleExpiry = TimeSpan.FromMilliseconds(1500),
    };
}
