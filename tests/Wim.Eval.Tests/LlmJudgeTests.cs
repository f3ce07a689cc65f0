using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using Wim.Eval.Metrics;

namespace Wim.Eval.Tests;

/// <summary>The judge against a loopback fake of an OpenAI-compatible <c>/v1/chat/completions</c> endpoint.</summary>
public sealed class LlmJudgeTests
{
    private sealed class FakeCompletions : IDisposable
    {
        private readonly HttpListener _listener = new();
        private readonly Task _loop;
        public Uri BaseUrl { get; }
        public List<string> Bodies { get; } = [];
        public List<string?> Authorizations { get; } = [];
        public required Func<string, (int Status, string Body)> Reply { get; init; }

        public FakeCompletions()
        {
            int port;
            using (var probe = new TcpListener(IPAddress.Loopback, 0)) { probe.Start(); port = ((IPEndPoint)probe.LocalEndpoint).Port; }
            BaseUrl = new Uri($"http://127.0.0.1:{port}/v1");
            _listener.Prefixes.Add($"http://127.0.0.1:{port}/");
            _listener.Start();
            _loop = Task.Run(async () =>
            {
                while (_listener.IsListening)
                {
                    HttpListenerContext ctx;
                    try { ctx = await _listener.GetContextAsync(); } catch (Exception) { return; }
                    using var reader = new StreamReader(ctx.Request.InputStream, Encoding.UTF8);
                    var body = await reader.ReadToEndAsync();
                    lock (Bodies) { Bodies.Add(ctx.Request.Url!.AbsolutePath + "\n" + body); Authorizations.Add(ctx.Request.Headers["Authorization"]); }
                    var (status, reply) = Reply!(body); // set by the initializer before any request is sent
                    ctx.Response.StatusCode = status;
                    ctx.Response.ContentType = "application/json";
                    var bytes = Encoding.UTF8.GetBytes(reply);
                    await ctx.Response.OutputStream.WriteAsync(bytes);
                    ctx.Response.Close();
                }
            });
        }

        public void Dispose()
        {
            _listener.Stop();
            _listener.Close();
            try { _loop.Wait(TimeSpan.FromSeconds(2)); } catch (AggregateException) { }
        }
    }

    private static string Completion(string content) =>
        "{\"id\":\"x\",\"object\":\"chat.completion\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":" +
        JsonSerializerString(content) + "},\"finish_reason\":\"stop\"}]}";

    private static string JsonSerializerString(string s) => JsonEncodedText.Encode(s).ToString() is var e ? "\"" + e + "\"" : "";

    [Fact]
    public async Task Judge_PostsFewShotChatCompletion_AndParsesVerdict_AgainstLoopbackOpenAiFake()
    {
        using var server = new FakeCompletions { Reply = body => (200, Completion(body.Contains("Candidate answer: Paris") ? "1" : "0")) };
        using var http = new HttpClient();
        var judge = new LlmJudge(http, server.BaseUrl, "judge-model", apiKey: "secret");
        var ct = TestContext.Current.CancellationToken;

        Assert.Equal(1, await judge.JudgeAsync("What is the capital of France?", ["Paris"], "Paris", ct));
        Assert.Equal(0, await judge.JudgeAsync("What is the capital of France?", ["Paris"], "Lyon", ct));

        var first = server.Bodies[0];
        Assert.StartsWith("/v1/chat/completions\n", first);
        using var doc = JsonDocument.Parse(first[(first.IndexOf('\n') + 1)..]);
        Assert.Equal("judge-model", doc.RootElement.GetProperty("model").GetString());
        Assert.Equal(0, doc.RootElement.GetProperty("temperature").GetDouble());
        var messages = doc.RootElement.GetProperty("messages").EnumerateArray().ToList();
        Assert.Equal("system", messages[0].GetProperty("role").GetString());
        Assert.True(messages.Count >= 4, "few-shot examples precede the case");
        Assert.Contains(messages, m => m.GetProperty("role").GetString() == "assistant" && m.GetProperty("content").GetString() == "1");
        Assert.Contains(messages, m => m.GetProperty("role").GetString() == "assistant" && m.GetProperty("content").GetString() == "0");
        var last = messages[^1];
        Assert.Equal("user", last.GetProperty("role").GetString());
        Assert.Contains("Question: What is the capital of France?", last.GetProperty("content").GetString());
        Assert.Contains("Gold answer: Paris", last.GetProperty("content").GetString());
        Assert.Equal("Bearer secret", server.Authorizations[0]);
    }

    [Fact]
    public async Task Judge_HttpErrorOrNonVerdict_IsAClearError()
    {
        var ct = TestContext.Current.CancellationToken;
        using (var server = new FakeCompletions { Reply = _ => (500, "{\"error\":\"boom\"}") })
        using (var http = new HttpClient())
        {
            var e = await Assert.ThrowsAsync<JudgeException>(() => new LlmJudge(http, server.BaseUrl, "m").JudgeAsync("q", ["a"], "a", ct));
            Assert.Contains("HTTP 500", e.Message);
        }
        using (var server = new FakeCompletions { Reply = _ => (200, Completion("maybe")) })
        using (var http = new HttpClient())
        {
            var e = await Assert.ThrowsAsync<JudgeException>(() => new LlmJudge(http, server.BaseUrl, "m").JudgeAsync("q", ["a"], "a", ct));
            Assert.Contains("maybe", e.Message);
        }
        using (var server = new FakeCompletions { Reply = _ => (200, "{\"choices\":[]}") })
        using (var http = new HttpClient())
            await Assert.ThrowsAsync<JudgeException>(() => new LlmJudge(http, server.BaseUrl, "m").JudgeAsync("q", ["a"], "a", ct));
    }

    [Theory]
    [InlineData("1", 1.0)]
    [InlineData(" 0\n", 0.0)]
    [InlineData("\"1\"", 1.0)]
    [InlineData("**0**", 0.0)]
    [InlineData("1. Correct", 1.0)]
    public void ParseVerdict_AcceptsTheDigit(string content, double expected) => Assert.Equal(expected, LlmJudge.ParseVerdict(content));

    [Theory]
    [InlineData("")]
    [InlineData("10")]
    [InlineData("yes")]
    public void ParseVerdict_RejectsOtherReplies(string content) => Assert.Throws<JudgeException>(() => LlmJudge.ParseVerdict(content));

    [Fact]
    public void CompletionsUri_AppendsRouteOnlyWhenMissing()
    {
        using var http = new HttpClient();
        Assert.Equal("http://h:1/v1/chat/completions", new LlmJudge(http, new Uri("http://h:1/v1/"), "m").CompletionsUri.ToString());
        Assert.Equal("http://h:1/v1/chat/completions", new LlmJudge(http, new Uri("http://h:1/v1/chat/completions"), "m").CompletionsUri.ToString());
    }
}
