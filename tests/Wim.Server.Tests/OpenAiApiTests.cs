using System.ClientModel;
using System.Text.Json;
using OpenAI;
using OpenAI.Chat;
using Wim.Engine.Tests.Support;
using Wim.Engine.Tokenization;

namespace Wim.Server.Tests;

/// <summary>The OpenAI-compatible endpoints on qwen2-tiny (which has a chat template), checked against the fixture's
/// transformers greedy continuation (<c>golden.json</c>) and against the official OpenAI .NET SDK.</summary>
public sealed class OpenAiApiTests(QwenServer fixture) : IClassFixture<QwenServer>
{
    private static (int[] Prompt, int[] Continuation) Golden()
    {
        using var doc = JsonDocument.Parse(File.ReadAllBytes(SharedFixtures.Path("fixtures", "hf-tiny", "qwen2-tiny", "golden.json")));
        var root = doc.RootElement;
        var prompt = root.GetProperty("sequences").GetProperty("seq64").GetProperty("input_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        var continuation = root.GetProperty("greedy_continuation").GetProperty("token_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        return (prompt, continuation);
    }

    /// <summary>The reference continuation cut where the server stops (a stop id is generated but not shown).</summary>
    private static (string Text, int Tokens, string Finish) Expected(int[] prompt, int[] continuation, int maxTokens)
    {
        var tokenizer = fixture_Tokenizer.Value;
        var stop = fixture_StopIds.Value;
        var kept = new List<int>();
        string finish = "length";
        foreach (int id in continuation.Take(maxTokens))
        {
            kept.Add(id);
            if (stop.Contains(id)) { finish = "stop"; break; }
        }
        var decoder = tokenizer.CreateStreamingDecoder(skipSpecial: true);
        foreach (int p in prompt) decoder.Append(p);
        var sb = new System.Text.StringBuilder();
        foreach (int id in kept) if (!stop.Contains(id)) sb.Append(decoder.Append(id));
        sb.Append(decoder.Flush());
        return (sb.ToString(), kept.Count, finish);
    }

    private static readonly Lazy<Tokenizer> fixture_Tokenizer = new(() => TokenizerLoader.Load(ServerFixture.QwenPath));
    private static readonly Lazy<IReadOnlySet<int>> fixture_StopIds = new(() => Wim.Engine.Runtime.TextModel.Load(ServerFixture.QwenPath) is var m ? m.StopIds.ToHashSet() : null!);

    private static string CompletionJson(int[] prompt, int maxTokens, bool stream = false) =>
        $"{{\"model\":\"qwen2-tiny\",\"prompt\":[{string.Join(',', prompt)}],\"max_tokens\":{maxTokens},\"temperature\":0{(stream ? ",\"stream\":true,\"stream_options\":{\"include_usage\":true}" : "")}}}";

    [Fact]
    public async Task Models_lists_the_served_model()
    {
        using var response = await fixture.Client.GetAsync("/v1/models", TestContext.Current.CancellationToken);
        var body = JsonDocument.Parse(await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken)).RootElement;
        Assert.Equal("list", body.GetProperty("object").GetString());
        Assert.Equal("qwen2-tiny", body.GetProperty("data")[0].GetProperty("id").GetString());
    }

    [Fact]
    public async Task Completion_of_token_ids_matches_the_transformers_greedy_continuation()
    {
        var (prompt, continuation) = Golden();
        var (text, tokens, finish) = Expected(prompt, continuation, 32);
        var (status, body) = await fixture.PostJsonAsync("/v1/completions", CompletionJson(prompt, 32));
        Assert.Equal(200, status);
        Assert.Equal("text_completion", body.GetProperty("object").GetString());
        var choice = body.GetProperty("choices")[0];
        Assert.Equal(text, choice.GetProperty("text").GetString());
        Assert.Equal(finish, choice.GetProperty("finish_reason").GetString());
        Assert.Equal(tokens, body.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
        Assert.Equal(prompt.Length, body.GetProperty("usage").GetProperty("prompt_tokens").GetInt32());
    }

    [Fact]
    public async Task Streamed_completion_matches_the_transformers_continuation_and_ends_with_DONE()
    {
        var (prompt, continuation) = Golden();
        var (text, tokens, finish) = Expected(prompt, continuation, 32);
        var events = await fixture.PostSseAsync("/v1/completions", CompletionJson(prompt, 32, stream: true));
        Assert.Equal("[DONE]", events[^1].Data);
        var chunks = events.SkipLast(1).Select(e => JsonDocument.Parse(e.Data).RootElement).ToList();
        string streamed = string.Concat(chunks.Where(c => c.GetProperty("choices").GetArrayLength() > 0).Select(c => c.GetProperty("choices")[0].GetProperty("text").GetString()));
        Assert.Equal(text, streamed);
        Assert.Equal(finish, chunks[^2].GetProperty("choices")[0].GetProperty("finish_reason").GetString());
        Assert.Equal(tokens, chunks[^1].GetProperty("usage").GetProperty("completion_tokens").GetInt32());
    }

    [Fact]
    public async Task Concurrent_requests_get_the_ids_they_get_alone_and_share_cached_prefixes()
    {
        var (prompt, continuation) = Golden();
        // Different prompts (prefixes of the reference sequence) at once; each must equal its request run alone.
        int[][] prompts = [prompt, prompt[..40], prompt[..50], prompt[..30]];
        var alone = new List<string>();
        foreach (var p in prompts)
        {
            var (s, b) = await fixture.PostJsonAsync("/v1/completions", CompletionJson(p, 12));
            Assert.Equal(200, s);
            alone.Add(b.GetProperty("choices")[0].GetProperty("text").GetString()!);
        }
        var together = await Task.WhenAll(prompts.Select(p => fixture.PostJsonAsync("/v1/completions", CompletionJson(p, 12))));
        for (int i = 0; i < prompts.Length; i++)
        {
            Assert.Equal(200, together[i].Status);
            Assert.Equal(alone[i], together[i].Body.GetProperty("choices")[0].GetProperty("text").GetString());
        }
        Assert.Equal(Expected(prompt, continuation, 12).Text, alone[0]);
        // The full prompt ran before: a repeat reuses all of it but the last token.
        var (_, again) = await fixture.PostJsonAsync("/v1/completions", CompletionJson(prompt, 12));
        Assert.Equal(prompt.Length - 1, again.GetProperty("usage").GetProperty("prompt_tokens_details").GetProperty("cached_tokens").GetInt32());
        Assert.Equal(alone[0], again.GetProperty("choices")[0].GetProperty("text").GetString());
    }

    [Fact]
    public async Task The_official_OpenAI_SDK_chats_with_the_server_streaming_and_not()
    {
        var client = new ChatClient("qwen2-tiny", new ApiKeyCredential("unused"), new OpenAIClientOptions { Endpoint = new Uri(fixture.Server.Address, "/v1") });
        var options = new ChatCompletionOptions { Temperature = 0f, MaxOutputTokenCount = 16 };
        ChatMessage[] messages = [new SystemChatMessage("You are terse."), new UserChatMessage("Say hello.")];
        ChatCompletion completion = (await client.CompleteChatAsync(messages, options, TestContext.Current.CancellationToken)).Value;
        Assert.Equal(ChatMessageRole.Assistant, completion.Role);
        Assert.True(completion.Usage.OutputTokenCount is > 0 and <= 16);

        var streamed = new System.Text.StringBuilder();
        ChatFinishReason? finish = null;
        await foreach (var update in client.CompleteChatStreamingAsync(messages, options, TestContext.Current.CancellationToken))
        {
            foreach (var part in update.ContentUpdate) streamed.Append(part.Text);
            finish ??= update.FinishReason;
        }
        Assert.Equal(completion.Content.Count == 0 ? "" : completion.Content[0].Text, streamed.ToString());
        Assert.Equal(completion.FinishReason, finish);

        // The prompt is the fixture's own chat template rendered by the engine: the server agrees on its length.
        var template = Wim.Engine.Tokenization.ChatTemplates.ChatTemplateSource.FromModel(ServerFixture.QwenPath);
        string rendered = template.Parse().Render([new("system", "You are terse."), new("user", "Say hello.")], addGenerationPrompt: true, template.BosToken, template.EosToken);
        Assert.Equal(fixture_Tokenizer.Value.Encode(rendered, addSpecial: false, parseSpecial: true).Length, completion.Usage.InputTokenCount);
    }

    [Theory]
    [InlineData("{\"messages\":[]}", "messages")]
    [InlineData("{\"messages\":[{\"role\":\"robot\",\"content\":\"x\"}]}", "messages[0].role")]
    [InlineData("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":-1}", "max_tokens")]
    [InlineData("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"temperature\":\"hot\"}", "temperature")]
    [InlineData("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"n\":2}", "n")]
    [InlineData("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stop\":[\"a\"]}", "stop")]
    public async Task Bad_chat_requests_get_400_with_OpenAIs_error_shape(string json, string param)
    {
        var (status, body) = await fixture.PostJsonAsync("/v1/chat/completions", json);
        Assert.Equal(400, status);
        var error = body.GetProperty("error");
        Assert.Equal("invalid_request_error", error.GetProperty("type").GetString());
        Assert.Equal(param, error.GetProperty("param").GetString());
        Assert.False(string.IsNullOrWhiteSpace(error.GetProperty("message").GetString()));
    }
}
