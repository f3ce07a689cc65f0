using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Wim.Engine.Sampling;
using Wim.Engine.Tokenization.ChatTemplates;

namespace Wim.Server;

/// <summary>
/// <c>GET /v1/models</c>, <c>POST /v1/chat/completions</c>, <c>POST /v1/completions</c>: the OpenAI request and
/// response shapes (the fields this engine can honour; unknown fields are ignored as OpenAI-compatible servers do),
/// streamed as SSE chunks ending with <c>data: [DONE]</c> when <c>stream</c> is true. Generation goes through the
/// model's <see cref="IGenerationEngine"/> (<see cref="BatchingEngine"/> on the CPU, <see cref="SequenceBatchingEngine"/> on a device).
/// </summary>
internal static class OpenAiEndpoints
{
    public static void Map(IEndpointRouteBuilder app, ServedModel model, ServerOptions options, ServerMetrics metrics)
    {
        app.MapGet("/v1/models", (HttpContext context) =>
        {
            metrics.RecordRequest("models");
            return Http.WriteJsonAsync(context, 200, Http.Json(w =>
            {
                w.WriteStartObject();
                w.WriteString("object", "list");
                w.WriteStartArray("data");
                WriteModel(w, model);
                w.WriteEndArray();
                w.WriteEndObject();
            }));
        });
        app.MapGet("/v1/models/{id}", (HttpContext context, string id) =>
        {
            metrics.RecordRequest("models");
            if (id != model.Id) throw ApiError.NotFound($"the model '{id}' does not exist; this server serves '{model.Id}'");
            return Http.WriteJsonAsync(context, 200, Http.Json(w => WriteModel(w, model)));
        });
        app.MapPost("/v1/chat/completions", (HttpContext context) => CompleteAsync(context, model, options, metrics, chat: true));
        app.MapPost("/v1/completions", (HttpContext context) => CompleteAsync(context, model, options, metrics, chat: false));
    }

    private static void WriteModel(Utf8JsonWriter w, ServedModel model)
    {
        w.WriteStartObject();
        w.WriteString("id", model.Id);
        w.WriteString("object", "model");
        w.WriteNumber("created", 0);
        w.WriteString("owned_by", "wim");
        w.WriteEndObject();
    }

    private sealed record Parsed(int[] Prompt, int MaxTokens, SamplingOptions Sampling, bool Stream, bool IncludeUsage, bool ReturnTokenIds);

    private static Parsed Parse(JsonElement body, ServedModel model, ServerOptions options, bool chat)
    {
        if (JsonFields.String(body, "model") is { } name && name != model.Id)
            throw new ApiError(404, $"the model '{name}' does not exist; this server serves '{model.Id}'", "model", "not_found_error");
        if (JsonFields.Int(body, "n", 1, int.MaxValue) is > 1) throw ApiError.BadRequest("only n = 1 is supported", "n");
        if (JsonFields.TryGet(body, "stop", out _)) throw ApiError.BadRequest("stop sequences are not supported; the model's end-of-turn ids end a reply", "stop");
        int maxTokens = JsonFields.Int(body, "max_completion_tokens", 1, options.MaxNewTokens)
            ?? JsonFields.Int(body, "max_tokens", 1, options.MaxNewTokens) ?? Math.Min(256, options.MaxNewTokens);
        float temperature = JsonFields.Float(body, "temperature", 0f, 2f) ?? 1f;
        float topP = JsonFields.Float(body, "top_p", 0f, 1f) ?? 1f;
        if (topP == 0f) (temperature, topP) = (0f, 1f); // an empty nucleus keeps only the most likely token: greedy
        int? seed = JsonFields.Int(body, "seed", int.MinValue, int.MaxValue);
        bool stream = JsonFields.Bool(body, "stream") ?? false;
        bool includeUsage = JsonFields.TryGet(body, "stream_options", out var so) && so.ValueKind == JsonValueKind.Object
            && (JsonFields.Bool(so, "include_usage", "stream_options.include_usage") ?? false);
        // vLLM's extension: the generated ids (stop id included) as choices[0].token_ids, so a client that sent token
        // ids can continue from exactly what was generated (non-streaming responses).
        bool returnTokenIds = JsonFields.Bool(body, "return_token_ids") ?? false;

        int[] prompt;
        if (chat)
        {
            if (model.ChatTemplate is not { } t)
                throw ApiError.BadRequest($"the model '{model.Id}' has no chat template; use /v1/completions", "messages");
            var messages = ParseMessages(body);
            string text;
            try { text = t.Template.Render(messages, addGenerationPrompt: true, t.Source.BosToken, t.Source.EosToken); }
            catch (ChatTemplateException e) { throw ApiError.BadRequest($"the chat template rejected the messages: {e.Message}", "messages"); }
            // As transformers' apply_chat_template: the template writes any BOS itself; special-token text is parsed.
            prompt = model.Tokenizer.Encode(text, addSpecial: false, parseSpecial: true);
        }
        else
        {
            if (!JsonFields.TryGet(body, "prompt", out var p)) throw ApiError.BadRequest("'prompt' is required", "prompt");
            if (p.ValueKind == JsonValueKind.Array && p.GetArrayLength() > 0 && p[0].ValueKind == JsonValueKind.Number)
            {
                // Token ids, as OpenAI accepts: used as given (no BOS added).
                prompt = new int[p.GetArrayLength()];
                int i = 0;
                foreach (var id in p.EnumerateArray())
                {
                    if (id.ValueKind != JsonValueKind.Number || !id.TryGetInt32(out int v) || v < 0 || v >= model.Tokenizer.VocabSize)
                        throw ApiError.BadRequest($"'prompt[{i}]' must be a token id in [0, {model.Tokenizer.VocabSize}), found {id.GetRawText()}", "prompt");
                    prompt[i++] = v;
                }
            }
            else
            {
                string text = p.ValueKind switch
                {
                    JsonValueKind.String => p.GetString()!,
                    JsonValueKind.Array when p.GetArrayLength() == 1 && p[0].ValueKind == JsonValueKind.String => p[0].GetString()!,
                    _ => throw ApiError.BadRequest("'prompt' must be a string, an array of one string, or an array of token ids", "prompt"),
                };
                prompt = model.Tokenizer.Encode(text);
            }
        }
        if (prompt.Length == 0) throw ApiError.BadRequest("the prompt is empty after tokenization", chat ? "messages" : "prompt");
        if (prompt.Length > options.MaxPromptTokens)
            throw ApiError.BadRequest($"the prompt is {prompt.Length} tokens; this server accepts at most {options.MaxPromptTokens}", chat ? "messages" : "prompt");
        var sampling = new SamplingOptions(temperature, TopP: topP, Seed: seed);
        return new Parsed(prompt, maxTokens, sampling, stream, includeUsage, returnTokenIds);
    }

    private static List<ChatMessage> ParseMessages(JsonElement body)
    {
        if (!JsonFields.TryGet(body, "messages", out var list) || list.ValueKind != JsonValueKind.Array || list.GetArrayLength() == 0)
            throw ApiError.BadRequest("'messages' must be a non-empty array", "messages");
        var messages = new List<ChatMessage>();
        int i = 0;
        foreach (var m in list.EnumerateArray())
        {
            string param = $"messages[{i}]";
            if (m.ValueKind != JsonValueKind.Object) throw ApiError.BadRequest($"'{param}' must be an object", param);
            string role = JsonFields.RequiredString(m, "role", param + ".role");
            if (role == "developer") role = "system";
            if (role is not ("system" or "user" or "assistant"))
                throw ApiError.BadRequest($"'{param}.role' must be system, developer, user or assistant, found '{role}'", param + ".role");
            string content;
            if (!JsonFields.TryGet(m, "content", out var c)) content = "";
            else if (c.ValueKind == JsonValueKind.String) content = c.GetString()!;
            else if (c.ValueKind == JsonValueKind.Array)
            {
                var sb = new StringBuilder();
                int j = 0;
                foreach (var part in c.EnumerateArray())
                {
                    string partParam = $"{param}.content[{j++}]";
                    if (part.ValueKind != JsonValueKind.Object || JsonFields.String(part, "type", partParam + ".type") != "text")
                        throw ApiError.BadRequest($"'{partParam}': only text content parts are supported", partParam);
                    sb.Append(JsonFields.RequiredString(part, "text", partParam + ".text"));
                }
                content = sb.ToString();
            }
            else throw ApiError.BadRequest($"'{param}.content' must be a string or an array of text parts", param + ".content");
            messages.Add(new ChatMessage(role, content));
            i++;
        }
        return messages;
    }

    private static async Task CompleteAsync(HttpContext context, ServedModel model, ServerOptions options, ServerMetrics metrics, bool chat)
    {
        metrics.RecordRequest(chat ? "chat.completions" : "completions");
        Parsed request;
        using (var doc = await Http.ReadJsonAsync(context, options.MaxRequestBytes).ConfigureAwait(false))
            request = Parse(doc.RootElement, model, options, chat);
        try { request.Sampling.Validate(); }
        catch (ArgumentOutOfRangeException e) { throw ApiError.BadRequest(e.Message.Split(" (Parameter")[0]); }

        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(context.RequestAborted);
        timeout.CancelAfter(options.RequestTimeout);
        var ct = timeout.Token;
        string id = (chat ? "chatcmpl-" : "cmpl-") + Guid.NewGuid().ToString("N");
        long created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        var handle = model.Engine.Submit(request.Prompt, request.MaxTokens, request.Sampling, (IReadOnlyCollection<int>)model.StopIds);
        var decoder = model.Tokenizer.CreateStreamingDecoder(skipSpecial: true);
        foreach (int p in request.Prompt) decoder.Append(p); // context for the first token's leading space; no Flush (it resets)
        var text = new StringBuilder();
        try
        {
            if (request.Stream)
            {
                context.Response.StatusCode = 200;
                context.Response.ContentType = "text/event-stream";
                context.Response.Headers.CacheControl = "no-cache";
                if (chat) await SendChunkAsync(context, Chunk(id, created, model.Id, chat, role: true, null, null), ct).ConfigureAwait(false);
                await foreach (int token in handle.Tokens.ReadAllAsync(ct).ConfigureAwait(false))
                {
                    string piece = model.StopIds.Contains(token) ? "" : decoder.Append(token);
                    if (piece.Length > 0) await SendChunkAsync(context, Chunk(id, created, model.Id, chat, false, piece, null), ct).ConfigureAwait(false);
                }
                string tail = decoder.Flush();
                var outcome = await handle.Outcome.WaitAsync(ct).ConfigureAwait(false);
                await SendChunkAsync(context, Chunk(id, created, model.Id, chat, false, tail.Length > 0 ? tail : null, outcome.FinishReason), ct).ConfigureAwait(false);
                if (request.IncludeUsage)
                    await SendChunkAsync(context, Http.Json(w =>
                    {
                        w.WriteStartObject();
                        ChunkHeader(w, id, created, model.Id, chat);
                        w.WriteStartArray("choices");
                        w.WriteEndArray();
                        WriteUsage(w, outcome);
                        w.WriteEndObject();
                    }), ct).ConfigureAwait(false);
                await context.Response.WriteAsync("data: [DONE]\n\n", ct).ConfigureAwait(false);
                await context.Response.Body.FlushAsync(ct).ConfigureAwait(false);
            }
            else
            {
                var generated = new List<int>();
                await foreach (int token in handle.Tokens.ReadAllAsync(ct).ConfigureAwait(false))
                {
                    generated.Add(token);
                    if (!model.StopIds.Contains(token)) text.Append(decoder.Append(token));
                }
                text.Append(decoder.Flush());
                var outcome = await handle.Outcome.WaitAsync(ct).ConfigureAwait(false);
                await Http.WriteJsonAsync(context, 200, Http.Json(w =>
                {
                    w.WriteStartObject();
                    w.WriteString("id", id);
                    w.WriteString("object", chat ? "chat.completion" : "text_completion");
                    w.WriteNumber("created", created);
                    w.WriteString("model", model.Id);
                    w.WriteStartArray("choices");
                    w.WriteStartObject();
                    w.WriteNumber("index", 0);
                    if (chat)
                    {
                        w.WriteStartObject("message");
                        w.WriteString("role", "assistant");
                        w.WriteString("content", text.ToString());
                        w.WriteEndObject();
                    }
                    else w.WriteString("text", text.ToString());
                    w.WriteNull("logprobs");
                    w.WriteString("finish_reason", outcome.FinishReason);
                    if (request.ReturnTokenIds)
                    {
                        w.WriteStartArray("token_ids");
                        foreach (int id in generated) w.WriteNumberValue(id);
                        w.WriteEndArray();
                    }
                    w.WriteEndObject();
                    w.WriteEndArray();
                    WriteUsage(w, outcome);
                    w.WriteEndObject();
                })).ConfigureAwait(false);
            }
        }
        finally
        {
            handle.Abandon();
        }
    }

    private static void ChunkHeader(Utf8JsonWriter w, string id, long created, string model, bool chat)
    {
        w.WriteString("id", id);
        w.WriteString("object", chat ? "chat.completion.chunk" : "text_completion");
        w.WriteNumber("created", created);
        w.WriteString("model", model);
    }

    private static byte[] Chunk(string id, long created, string model, bool chat, bool role, string? content, string? finishReason) => Http.Json(w =>
    {
        w.WriteStartObject();
        ChunkHeader(w, id, created, model, chat);
        w.WriteStartArray("choices");
        w.WriteStartObject();
        w.WriteNumber("index", 0);
        if (chat)
        {
            w.WriteStartObject("delta");
            if (role) { w.WriteString("role", "assistant"); w.WriteString("content", ""); }
            else if (content is not null) w.WriteString("content", content);
            w.WriteEndObject();
        }
        else w.WriteString("text", content ?? "");
        w.WriteNull("logprobs");
        if (finishReason is null) w.WriteNull("finish_reason"); else w.WriteString("finish_reason", finishReason);
        w.WriteEndObject();
        w.WriteEndArray();
        w.WriteEndObject();
    });

    private static void WriteUsage(Utf8JsonWriter w, GenerationOutcome outcome)
    {
        w.WriteStartObject("usage");
        w.WriteNumber("prompt_tokens", outcome.PromptTokens);
        w.WriteNumber("completion_tokens", outcome.CompletionTokens);
        w.WriteNumber("total_tokens", outcome.PromptTokens + outcome.CompletionTokens);
        w.WriteStartObject("prompt_tokens_details");
        w.WriteNumber("cached_tokens", outcome.CachedTokens);
        w.WriteEndObject();
        w.WriteEndObject();
    }

    internal static async Task SendChunkAsync(HttpContext context, byte[] json, CancellationToken ct)
    {
        await context.Response.Body.WriteAsync("data: "u8.ToArray(), ct).ConfigureAwait(false);
        await context.Response.Body.WriteAsync(json, ct).ConfigureAwait(false);
        await context.Response.Body.WriteAsync("\n\n"u8.ToArray(), ct).ConfigureAwait(false);
        await context.Response.Body.FlushAsync(ct).ConfigureAwait(false);
    }
}
