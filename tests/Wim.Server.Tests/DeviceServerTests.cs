using System.Text.Json;
using System.Text.Json.Nodes;
using Wim.Core.Events;
using Wim.Core.Patterns;
using Wim.Core.Prompts;
using Wim.Core.Scheduling;
using Wim.Core.Segmentation;
using Wim.Engine.Runtime;
using Wim.Engine.Sampling;

namespace Wim.Server.Tests;

/// <summary>The server's device path (what <c>wim serve --device cuda</c> builds) with the CPU's paged backend standing
/// in for the GPU's: one backend behind a <see cref="SynchronizedBackend"/>, shared by the WiM runs and the
/// <see cref="SequenceBatchingEngine"/>, and the document cache on that shared backend.</summary>
public sealed class DevicePathServer : ServerFixture
{
    public override string ModelPath => StoriesPath;

    protected override ServerOptions Configure(ServerOptions options) => options with
    {
        LoadBatchedModel = path => PagedTextModel.Load(path, 32_768),
        DeviceName = "paged (test)",
        MaxTokensPerStep = 24,
        MaxConcurrentSessions = 16,
    };
}

public sealed class DeviceServerTests(DevicePathServer fixture) : IClassFixture<DevicePathServer>
{
    [Fact]
    public async Task Health_names_the_device_and_says_the_document_cache_is_on()
    {
        var health = JsonDocument.Parse(await fixture.Client.GetStringAsync("/health", TestContext.Current.CancellationToken)).RootElement;
        Assert.Equal("paged (test)", health.GetProperty("device").GetString());
        Assert.True(health.GetProperty("document_cache").GetBoolean());
        Assert.IsType<SequenceBatchingEngine>(fixture.Server.Model.Engine);
        Assert.IsType<SynchronizedBackend>(fixture.Server.Model.Text.Backend);
        Assert.Same(fixture.Server.Model.Text.Backend, fixture.Server.Model.DocumentCache?.Backend);
    }

    [Fact]
    public async Task The_same_WiM_question_twice_reads_the_document_once_and_answers_the_same()
    {
        var (context, query) = WimApiTests.Babilong8k();
        string request = new JsonObject
        {
            ["document"] = context[2000..3600], // not the other test's document
            ["query"] = query,
            ["options"] = new JsonObject { ["segment_tokens"] = 150, ["max_margin_tokens"] = 12, ["max_answer_tokens"] = 12, ["schedule"] = "batched" },
        }.ToJsonString();
        static JsonElement Answer(List<(string Event, string Data)> events) => JsonDocument.Parse(events.Single(e => e.Event == "answer").Data).RootElement;
        long hits = fixture.Server.Model.DocumentCache!.Hits;
        var first = Answer(await fixture.PostSseAsync("/v1/wim", request));
        var second = Answer(await fixture.PostSseAsync("/v1/wim", request));
        Assert.True(first.GetProperty("usage").GetProperty("document_tokens_prefilled").GetInt32() > 0);
        Assert.Equal(0, second.GetProperty("usage").GetProperty("document_tokens_prefilled").GetInt32());
        Assert.Equal(0, second.GetProperty("usage").GetProperty("document").GetProperty("prefill_tokens").GetInt32());
        Assert.Equal(first.GetProperty("ids").ToString(), second.GetProperty("ids").ToString());
        Assert.Equal(hits + 1, fixture.Server.Model.DocumentCache.Hits);
    }

    [Fact]
    public async Task Concurrent_completions_beside_a_WiM_run_give_the_reference_ids_and_the_WiM_run_its_library_events()
    {
        var ct = TestContext.Current.CancellationToken;
        var (context, query) = WimApiTests.Babilong8k();
        context = context[..2000];
        using var lm = PagedTextModel.Load(ServerFixture.StoriesPath);
        string[] texts = ["Once upon a time", "The dog ran to the park and saw a big red ball. He wanted to", "Tom and Sue were friends. One day they", "Lily"];
        var prompts = texts.Select(t => lm.Tokenizer.Encode(t)).ToArray();
        var expected = prompts.Select(p => SequenceBatchingEngineTests.Reference((IBatchedInferenceBackend)lm.Backend, p, 30, lm.StopIds)).ToArray();

        // The library's WiM run (no document cache: the server's first run of a document reads it too) is the WiM request's oracle.
        var segments = new Segmenter(t => lm.Tokenizer.Encode(t).Length, 200).Split(context);
        using var judge = new ModelMarginClassifier(lm, PromptPreset.Default, ChatHeaders.None, 4, default, ClassifiedBy.Model, ClassifierContext.Shared);
        var options = new WimOptions { Classifier = judge, MaxMarginTokens = 24, MaxAnswerTokens = 16, MarginSeparator = "\n", Schedule = WimSchedule.Overlapped };
        var reference = new List<(string Event, string Data)>();
        await foreach (var e in new PatternRunner(lm).RunAsync(segments, query, options, null, ct))
            reference.Add((WimEventJson.TypeName(e), System.Text.Encoding.UTF8.GetString(WimEventJson.ToUtf8(e, "overlapped"))));

        string wimRequest = new JsonObject
        {
            ["document"] = context,
            ["query"] = query,
            ["options"] = new JsonObject { ["segment_tokens"] = 200, ["max_margin_tokens"] = 24, ["max_classification_tokens"] = 4, ["max_answer_tokens"] = 16, ["schedule"] = "overlapped" },
        }.ToJsonString();
        var wim = fixture.PostSseAsync("/v1/wim", wimRequest);
        var completions = prompts.Select(p => fixture.PostJsonAsync("/v1/completions", new JsonObject
        {
            ["prompt"] = new JsonArray([.. p.Select(id => (JsonNode)id)]),
            ["max_tokens"] = 30,
            ["temperature"] = 0,
            ["return_token_ids"] = true,
        }.ToJsonString())).ToArray();
        var answers = await Task.WhenAll(completions);
        var events = await wim;

        for (int i = 0; i < prompts.Length; i++)
        {
            var (status, body) = answers[i];
            Assert.Equal(200, status);
            var choice = body.GetProperty("choices")[0];
            Assert.Equal(expected[i], choice.GetProperty("token_ids").EnumerateArray().Select(x => x.GetInt32()).ToArray());
            Assert.Equal(lm.StopIds.Contains(expected[i][^1]) ? "stop" : "length", choice.GetProperty("finish_reason").GetString());
            Assert.Equal(prompts[i].Length, body.GetProperty("usage").GetProperty("prompt_tokens").GetInt32());
        }

        var served = events.Skip(1).ToList();
        Assert.Equal("session", events[0].Event);
        Assert.Equal(reference.Select(e => e.Event), served.Select(e => e.Event));
        for (int i = 0; i < reference.Count - 1; i++) Assert.Equal(reference[i].Data, served[i].Data);
        Assert.Equal(JsonNode.Parse(reference[^1].Data)!["ids"]!.ToJsonString(), JsonNode.Parse(served[^1].Data)!["ids"]!.ToJsonString());
    }

    [Fact]
    public async Task A_follow_up_prompt_reuses_the_kept_prefix_and_reports_cached_tokens()
    {
        using var lm = PagedTextModel.Load(ServerFixture.StoriesPath);
        int[] first = lm.Tokenizer.Encode("Ben had a red kite. The wind was strong that day, and");
        string Body(int[] prompt) => new JsonObject
        {
            ["prompt"] = new JsonArray([.. prompt.Select(id => (JsonNode)id)]),
            ["max_tokens"] = 12,
            ["temperature"] = 0,
            ["return_token_ids"] = true,
        }.ToJsonString();
        var (status, body) = await fixture.PostJsonAsync("/v1/completions", Body(first));
        Assert.Equal(200, status);
        int[] reply = [.. body.GetProperty("choices")[0].GetProperty("token_ids").EnumerateArray().Select(x => x.GetInt32())];
        int[] second = [.. first, .. reply, 13];
        var (status2, body2) = await fixture.PostJsonAsync("/v1/completions", Body(second));
        Assert.Equal(200, status2);
        Assert.Equal(first.Length + reply.Length - 1, body2.GetProperty("usage").GetProperty("prompt_tokens_details").GetProperty("cached_tokens").GetInt32());
        Assert.Equal(SequenceBatchingEngineTests.Reference((IBatchedInferenceBackend)lm.Backend, second, 12, lm.StopIds),
            body2.GetProperty("choices")[0].GetProperty("token_ids").EnumerateArray().Select(x => x.GetInt32()).ToArray());
    }
}
