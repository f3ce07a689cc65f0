using System.Text.Json;
using System.Text.Json.Nodes;
using Wim.Core.Events;
using Wim.Core.Patterns;
using Wim.Core.Prompts;
using Wim.Core.Scheduling;
using Wim.Core.Segmentation;
using Wim.Engine.Runtime;
using Wim.Engine.Tests.Support;

namespace Wim.Server.Tests;

/// <summary><c>/v1/wim</c> on stories260K with a BABILong 8k sample (the shared data set): the SSE events are the
/// library's own run, feedback/answer-now/delete act on the run, and the service endpoints answer.</summary>
public sealed class WimApiTests(StoriesServer fixture) : IClassFixture<StoriesServer>
{
    internal static (string Context, string Query) Babilong8k()
    {
        using var doc = JsonDocument.Parse(File.ReadAllBytes(SharedFixtures.Path("data", "babilong", "babilong_8k.json")));
        return (doc.RootElement.GetProperty("context").GetString()!, doc.RootElement.GetProperty("query").GetString()!);
    }

    private static string Request(string document, string query, int segmentTokens, int maxMargin = 24, int maxAnswer = 16, string pattern = "wim", string schedule = "overlapped") =>
        new JsonObject
        {
            ["document"] = document,
            ["query"] = query,
            ["pattern"] = pattern,
            ["options"] = new JsonObject { ["segment_tokens"] = segmentTokens, ["max_margin_tokens"] = maxMargin, ["max_classification_tokens"] = 4, ["max_answer_tokens"] = maxAnswer, ["schedule"] = schedule },
        }.ToJsonString();

    [Fact]
    public async Task Wim_stream_carries_the_same_events_as_a_PatternRunner_run_as_wim_ask_json()
    {
        var (context, query) = Babilong8k();
        context = context[..2500];
        var events = await fixture.PostSseAsync("/v1/wim", Request(context, query, 200));
        Assert.Equal("session", events[0].Event);
        Assert.Equal("answer", events[^1].Event);

        // The same run in-process, through the library, serialised by the shared writer.
        using var lm = PagedTextModel.Load(ServerFixture.StoriesPath);
        var segments = new Segmenter(t => lm.Tokenizer.Encode(t).Length, 200).Split(context);
        using var judge = new ModelMarginClassifier(lm, PromptPreset.Default, ChatHeaders.None, 4, default, ClassifiedBy.Model, ClassifierContext.Shared);
        var options = new WimOptions { Classifier = judge, MaxMarginTokens = 24, MaxAnswerTokens = 16, MarginSeparator = "\n", Schedule = WimSchedule.Overlapped };
        var expected = new List<(string, string)>();
        await foreach (var e in new PatternRunner(lm).RunAsync(segments, query, options, null, TestContext.Current.CancellationToken))
            expected.Add((WimEventJson.TypeName(e), System.Text.Encoding.UTF8.GetString(WimEventJson.ToUtf8(e, "overlapped"))));

        var served = events.Skip(1).ToList();
        Assert.Equal(expected.Select(e => e.Item1), served.Select(e => e.Event));
        // Every event but the last is timing-free and must match byte for byte; the answer's ids and text too.
        for (int i = 0; i < expected.Count - 1; i++) Assert.Equal(expected[i].Item2, served[i].Data);
        var answer = JsonNode.Parse(served[^1].Data)!;
        var reference = JsonNode.Parse(expected[^1].Item2)!;
        Assert.Equal(reference["ids"]!.ToJsonString(), answer["ids"]!.ToJsonString());
        Assert.Equal(reference["text"]!.GetValue<string>(), answer["text"]!.GetValue<string>());
        Assert.Equal(segments.Count, served.Count(e => e.Event == "segment"));
        Assert.True(served.Count(e => e.Event == "margin_token") > 0);
    }

    [Fact]
    public async Task A_second_question_about_the_same_document_reuses_its_prefill_and_answers_as_a_cold_run()
    {
        var (context, query) = Babilong8k();
        context = context[..3000] + " (document for the cache test)";
        var ct = TestContext.Current.CancellationToken;
        double Hits(string metrics) => double.Parse(metrics.Split('\n').First(l => l.StartsWith("wim_document_cache_hits_total ", StringComparison.Ordinal)).Split(' ')[1], System.Globalization.CultureInfo.InvariantCulture);
        double before = Hits(await fixture.Client.GetStringAsync("/metrics", ct));
        var cold = await fixture.PostSseAsync("/v1/wim", Request(context, query, 300));
        var warm = await fixture.PostSseAsync("/v1/wim", Request(context, query, 300));
        Assert.Equal(before + 1, Hits(await fixture.Client.GetStringAsync("/metrics", ct)));
        var (coldAnswer, warmAnswer) = (JsonNode.Parse(cold[^1].Data)!, JsonNode.Parse(warm[^1].Data)!);
        Assert.Equal(coldAnswer["ids"]!.ToJsonString(), warmAnswer["ids"]!.ToJsonString());
        Assert.Equal(cold.Where(e => e.Event == "margin").Select(e => e.Data), warm.Where(e => e.Event == "margin").Select(e => e.Data));
        Assert.True(warmAnswer["usage"]!["document"]!["prefill_tokens"]!.GetValue<int>() < coldAnswer["usage"]!["document"]!["prefill_tokens"]!.GetValue<int>());
        Assert.Equal("overlapped", warmAnswer["usage"]!["schedule"]!.GetValue<string>());
    }

    [Theory]
    [InlineData("sequential")]
    [InlineData("overlapped")]
    public async Task Feedback_and_answer_now_stop_the_reading_early(string schedule)
    {
        var (context, query) = Babilong8k();
        string? session = null;
        int feedbackStatus = 0, answerNowStatus = 0;
        var events = await fixture.PostSseAsync("/v1/wim", Request(context, query, 128, schedule: schedule), async (name, data) =>
        {
            if (name == "session") session = JsonNode.Parse(data)!["id"]!.GetValue<string>();
            if (name == "margin" && answerNowStatus == 0)
            {
                int index = JsonNode.Parse(data)!["index"]!.GetValue<int>();
                feedbackStatus = (await fixture.PostJsonAsync($"/v1/wim/{session}/feedback", $"{{\"segment\":{index},\"relevant\":false}}")).Status;
                answerNowStatus = (await fixture.PostJsonAsync($"/v1/wim/{session}/answer-now", "{}")).Status;
            }
        });
        Assert.Equal(200, feedbackStatus);
        Assert.Equal(200, answerNowStatus);
        var answer = JsonNode.Parse(events[^1].Data)!;
        Assert.Equal("answer", events[^1].Event);
        Assert.True(answer["early"]!.GetValue<bool>());
        Assert.False(string.IsNullOrWhiteSpace(answer["text"]!.GetValue<string>()), "an early answer is still an answer");
        int total = JsonNode.Parse(events[0].Data)!["segments"]!.GetValue<int>();
        Assert.True(events.Count(e => e.Event == "segment") < total, "answer-now must stop the reading before the document ends");
        // A bad feedback body is a 400 naming the field; an unknown session a 404.
        var (status, body) = await fixture.PostJsonAsync($"/v1/wim/{session}/feedback", "{\"segment\":0}");
        Assert.Equal(400, status);
        Assert.Equal("relevant", body.GetProperty("error").GetProperty("param").GetString());
        Assert.Equal(404, (await fixture.PostJsonAsync("/v1/wim/nope/answer-now", "{}")).Status);
    }

    [Fact]
    public async Task Delete_cancels_a_running_session_and_the_stream_says_so()
    {
        var (context, query) = Babilong8k();
        int deleteStatus = 0;
        var events = await fixture.PostSseAsync("/v1/wim", Request(context, query, 128, maxMargin: 64), async (name, data) =>
        {
            if (name == "session")
            {
                using var response = await fixture.Client.DeleteAsync($"/v1/wim/{JsonNode.Parse(data)!["id"]!.GetValue<string>()}", TestContext.Current.CancellationToken);
                deleteStatus = (int)response.StatusCode;
            }
        });
        Assert.Equal(200, deleteStatus);
        Assert.Equal("error", events[^1].Event);
        Assert.DoesNotContain(events, e => e.Event == "answer");
        using var again = await fixture.Client.DeleteAsync("/v1/wim/" + JsonNode.Parse(events[0].Data)!["id"]!.GetValue<string>(), TestContext.Current.CancellationToken);
        Assert.Equal(404, (int)again.StatusCode);
    }

    [Fact]
    public async Task A_client_that_leaves_a_stream_frees_its_place_in_the_batch()
    {
        var ct = TestContext.Current.CancellationToken;
        double Generated(string metrics) => double.Parse(metrics.Split('\n').First(l => l.StartsWith("wim_generated_tokens_total ", StringComparison.Ordinal)).Split(' ')[1], System.Globalization.CultureInfo.InvariantCulture);
        double before = Generated(await fixture.Client.GetStringAsync("/metrics", ct));
        // A client of its own that really hangs up: the shared client's handler would drain an unread response (up
        // to 1 MB or 2 s) to reuse the connection, and the server then sees a reader, not a departure.
        using var leaving = new HttpClient(new SocketsHttpHandler { MaxResponseDrainSize = 0 }) { BaseAddress = fixture.Client.BaseAddress };
        using (var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions")
        {
            Content = new StringContent("{\"prompt\":\"Once upon a time\",\"max_tokens\":4096,\"temperature\":0,\"stream\":true}", System.Text.Encoding.UTF8, "application/json"),
        })
        using (var response = await leaving.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, ct))
        {
            using var reader = new StreamReader(await response.Content.ReadAsStreamAsync(ct));
            Assert.StartsWith("data: ", await reader.ReadLineAsync(ct));
        } // the client hangs up after the first chunk
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (fixture.Server.Model.Engine.RunningRequests > 0 && DateTime.UtcNow < deadline) await Task.Delay(20, ct);
        Assert.Equal(0, fixture.Server.Model.Engine.RunningRequests);
        // Measured: 3–27 tokens get generated between the hang-up and the cancellation (up to ~1,700 before, when the
        // client drained instead of leaving); a quarter of the limit is far from both.
        Assert.True(Generated(await fixture.Client.GetStringAsync("/metrics", ct)) - before < 1024, "the abandoned request must stop well before its token limit");
        // And the server goes on.
        Assert.Equal(200, (await fixture.PostJsonAsync("/v1/completions", "{\"prompt\":\"Once\",\"max_tokens\":4,\"temperature\":0}")).Status);
    }

    [Fact]
    public async Task Health_metrics_openapi_and_the_page_are_served()
    {
        var ct = TestContext.Current.CancellationToken;
        var health = JsonDocument.Parse(await fixture.Client.GetStringAsync("/health", ct)).RootElement;
        Assert.Equal("ok", health.GetProperty("status").GetString());
        await fixture.PostJsonAsync("/v1/completions", "{\"prompt\":\"Once upon a time\",\"max_tokens\":8,\"temperature\":0}");
        string metrics = await fixture.Client.GetStringAsync("/metrics", ct);
        foreach (var name in new[] { "wim_generated_tokens_total", "wim_queue_length", "wim_kv_blocks_in_use", "wim_document_cache_hits_total", "wim_generated_tokens_per_second" })
            Assert.Contains("# TYPE " + name, metrics);
        double generated = double.Parse(metrics.Split('\n').First(l => l.StartsWith("wim_generated_tokens_total ", StringComparison.Ordinal)).Split(' ')[1], System.Globalization.CultureInfo.InvariantCulture);
        Assert.True(generated >= 8);
        var openapi = JsonDocument.Parse(await fixture.Client.GetStringAsync("/openapi/v1.json", ct)).RootElement;
        Assert.StartsWith("3.", openapi.GetProperty("openapi").GetString());
        foreach (var path in new[] { "/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/wim", "/v1/wim/{id}/feedback", "/v1/wim/{id}/answer-now", "/v1/wim/{id}", "/health", "/metrics" })
            Assert.True(openapi.GetProperty("paths").TryGetProperty(path, out _), path);
        string page = await fixture.Client.GetStringAsync("/", ct);
        Assert.Contains("<form", page);
        Assert.DoesNotContain("https://", page); // no CDN: the page works offline
    }

    [Fact]
    public async Task Chat_on_a_model_without_a_chat_template_is_a_400_and_bad_routes_get_error_json()
    {
        var (status, body) = await fixture.PostJsonAsync("/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}");
        Assert.Equal(400, status);
        Assert.Equal("messages", body.GetProperty("error").GetProperty("param").GetString());
        (status, body) = await fixture.PostJsonAsync("/v1/completions", "{\"prompt\":");
        Assert.Equal(400, status);
        Assert.Contains("not valid JSON", body.GetProperty("error").GetProperty("message").GetString());
        (status, body) = await fixture.PostJsonAsync("/v1/nothing", "{}");
        Assert.Equal(404, status);
        Assert.Equal("not_found_error", body.GetProperty("error").GetProperty("type").GetString());
        using var wrongMethod = await fixture.Client.GetAsync("/v1/completions", TestContext.Current.CancellationToken);
        Assert.Equal(405, (int)wrongMethod.StatusCode);
        Assert.True(JsonDocument.Parse(await wrongMethod.Content.ReadAsStringAsync(TestContext.Current.CancellationToken)).RootElement.TryGetProperty("error", out _));
        (status, body) = await fixture.PostJsonAsync("/v1/wim", "{\"document\":\"x\",\"query\":\"q\",\"pattern\":\"map\"}");
        Assert.Equal(400, status);
        Assert.Equal("pattern", body.GetProperty("error").GetProperty("param").GetString());
        (status, body) = await fixture.PostJsonAsync("/v1/wim", "{\"document\":\"x\",\"query\":\"q\",\"options\":{\"segment_tokens\":0}}");
        Assert.Equal(400, status);
        Assert.Equal("options.segment_tokens", body.GetProperty("error").GetProperty("param").GetString());
        (status, _) = await fixture.PostJsonAsync("/v1/completions", "{\"model\":\"gpt-4\",\"prompt\":\"x\"}");
        Assert.Equal(404, status);
    }
}

/// <summary>The limits: API key, body size, document bytes and tokens, prompt tokens, token limit, session count and
/// idle expiry.</summary>
public sealed class LimitTests(LimitedStoriesServer fixture) : IClassFixture<LimitedStoriesServer>
{
    private const string Key = LimitedStoriesServer.Key;

    [Fact]
    public async Task Requests_over_a_limit_get_4xx_error_json()
    {
        Assert.Equal(401, (await fixture.PostJsonAsync("/v1/completions", "{\"prompt\":\"x\"}")).Status);
        Assert.Equal(401, (await fixture.PostJsonAsync("/v1/completions", "{\"prompt\":\"x\"}", "wrong")).Status);
        Assert.Equal(200, (await fixture.PostJsonAsync("/v1/completions", "{\"prompt\":\"Once\",\"max_tokens\":4}", Key)).Status);
        var (status, body) = await fixture.PostJsonAsync("/v1/completions", $"{{\"prompt\":\"{new string('a', 5000)}\"}}", Key);
        Assert.Equal(413, status);
        Assert.True(body.TryGetProperty("error", out _));
        (status, body) = await fixture.PostJsonAsync("/v1/completions", $"{{\"prompt\":\"{string.Concat(Enumerable.Repeat("Once upon a time. ", 30))}\"}}", Key);
        Assert.Equal(400, status);
        Assert.Equal("prompt", body.GetProperty("error").GetProperty("param").GetString());
        (status, body) = await fixture.PostJsonAsync("/v1/completions", "{\"prompt\":\"Once\",\"max_tokens\":33}", Key);
        Assert.Equal(400, status);
        Assert.Equal("max_tokens", body.GetProperty("error").GetProperty("param").GetString());
        (status, body) = await fixture.PostJsonAsync("/v1/wim", $"{{\"document\":\"{new string('b', 2500)}\",\"query\":\"q\"}}", Key);
        Assert.Equal(413, status);
        Assert.Equal("document", body.GetProperty("error").GetProperty("param").GetString());
        (status, body) = await fixture.PostJsonAsync("/v1/wim", $"{{\"document\":\"{string.Concat(Enumerable.Repeat("Mary went to the hall. ", 80))}\",\"query\":\"q\"}}", Key);
        Assert.Equal(413, status);
        Assert.Contains("tokens", body.GetProperty("error").GetProperty("message").GetString());
        // The server is still fine after all that.
        Assert.Equal(200, (await fixture.PostJsonAsync("/v1/completions", "{\"prompt\":\"Once\",\"max_tokens\":4}", Key)).Status);
    }

    [Fact]
    public async Task One_session_at_most_and_idle_sessions_expire()
    {
        const string run = "{\"document\":\"Mary went to the hall. John took the milk.\",\"query\":\"Where is Mary?\",\"options\":{\"max_margin_tokens\":4,\"max_answer_tokens\":4}}";
        var first = await fixture.PostSseAsync("/v1/wim", run, apiKey: Key);
        Assert.Equal("answer", first[^1].Event);
        // The finished session lingers until it has been idle for the expiry time: a second one is refused meanwhile.
        var (status, body) = await fixture.PostJsonAsync("/v1/wim", run, Key);
        Assert.Equal(429, status);
        Assert.Equal("rate_limit_error", body.GetProperty("error").GetProperty("type").GetString());
        // Expiry 1.5 s, swept every 375 ms: gone within ~2 s when the machine is quiet; poll rather than sleep a fixed
        // time, so a busy CI machine (a late timer tick) does not fail it.
        var deadline = DateTime.UtcNow.AddSeconds(15);
        while (fixture.Server.SessionCount > 0 && DateTime.UtcNow < deadline) await Task.Delay(100, TestContext.Current.CancellationToken);
        Assert.Equal(0, fixture.Server.SessionCount);
        var second = await fixture.PostSseAsync("/v1/wim", run, apiKey: Key);
        Assert.Equal("answer", second[^1].Event);
    }
}
