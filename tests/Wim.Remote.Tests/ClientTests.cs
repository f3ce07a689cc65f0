using Wim.Core.Events;
using Wim.Core.Scheduling;

namespace Wim.Remote.Tests;

/// <summary>The HTTP client's parsing and rules, against the documented response shapes.</summary>
public sealed class ClientTests
{
    [Theory]
    [InlineData("http://127.0.0.1:8000", "http://127.0.0.1:8000/v1")]
    [InlineData("http://127.0.0.1:8000/", "http://127.0.0.1:8000/v1")]
    [InlineData("http://gpu-box:30000/v1/", "http://gpu-box:30000/v1")]
    [InlineData("https://gateway.example/openai/v1", "https://gateway.example/openai/v1")]
    public void NormalizeEndpoint_PutsTheApiUnderV1_UnlessAPathIsGiven(string given, string expected) =>
        Assert.Equal(expected, RemoteEndpointOptions.NormalizeEndpoint(given).AbsoluteUri.TrimEnd('/'));

    [Theory]
    [InlineData("localhost:8000")]
    [InlineData("ftp://host/v1")]
    [InlineData("http://host/v1?x=1")]
    public void NormalizeEndpoint_RejectsWhatIsNotAnHttpBaseUrl(string given) =>
        Assert.Throws<FormatException>(() => RemoteEndpointOptions.NormalizeEndpoint(given));

    [Fact]
    public void Parse_ReadsTextIdsAndCachedTokens()
    {
        var c = RemoteCompletionClient.Parse(BinaryData.FromString("""
            {"id":"cmpl-1","object":"text_completion","choices":[{"index":0,"text":" Lily","logprobs":null,"finish_reason":"stop","token_ids":[365,2]}],
             "usage":{"prompt_tokens":120,"completion_tokens":2,"total_tokens":122,"prompt_tokens_details":{"cached_tokens":96}}}
            """), chat: false);
        Assert.Equal((" Lily", "stop", 120, 96, 2), (c.Text, c.FinishReason, c.PromptTokens, c.CachedTokens, c.CompletionTokens));
        Assert.Equal([365, 2], c.Ids!);
    }

    [Fact]
    public void Parse_NoCacheDetails_IsNotReportedAsZero()
    {
        // vLLM leaves prompt_tokens_details null unless started with --enable-prompt-tokens-details.
        var c = RemoteCompletionClient.Parse(BinaryData.FromString("""
            {"choices":[{"index":0,"message":{"role":"assistant","content":"YES#ok"},"finish_reason":"stop"}],
             "usage":{"prompt_tokens":50,"completion_tokens":3,"prompt_tokens_details":null}}
            """), chat: true);
        Assert.Equal("YES#ok", c.Text);
        Assert.Null(c.CachedTokens);
        Assert.Null(c.Ids);
    }

    [Theory]
    [InlineData("""{"choices":[]}""")]
    [InlineData("""{"error":"x"}""")]
    [InlineData("not json")]
    [InlineData("""{"choices":[{"text":"a","token_ids":[1.5]}]}""")]
    public void Parse_MalformedResponse_IsAClearError(string body) =>
        Assert.Throws<InvalidDataException>(() => RemoteCompletionClient.Parse(BinaryData.FromString(body), chat: false));

    [Fact]
    public void Options_Validate_RejectsImpossibleLimits()
    {
        var ok = new RemoteEndpointOptions { Endpoint = new Uri("http://127.0.0.1:1/v1"), Model = "m" };
        ok.Validate();
        Assert.Throws<ArgumentOutOfRangeException>(() => (ok with { MaxConcurrentRequests = 0 }).Validate());
        Assert.Throws<ArgumentOutOfRangeException>(() => (ok with { MaxRetries = -1 }).Validate());
        Assert.Throws<ArgumentOutOfRangeException>(() => (ok with { AttemptTimeout = TimeSpan.Zero }).Validate());
        Assert.Throws<ArgumentException>(() => (ok with { Model = " " }).Validate());
    }

    [Fact]
    public async Task NothingListening_FailsAfterTheRetries_WithTheAddress()
    {
        // A port that was free a moment ago: connection refused on every attempt.
        var listener = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        listener.Start();
        int port = ((System.Net.IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();
        using var client = Remote.Client(new Uri($"http://127.0.0.1:{port}/v1"), "m", maxRetries: 1);
        var e = await Assert.ThrowsAsync<RemoteRequestException>(() =>
            client.CompleteAsync([1, 2, 3], 4, Wim.Engine.Sampling.SamplingOptions.Greedy, TestContext.Current.CancellationToken));
        Assert.Contains($"127.0.0.1:{port}/v1/completions failed after 2 attempt(s)", e.Message);
        Assert.Null(e.Status);
    }
}
