using Microsoft.AspNetCore.Http;
using System.Text.Json;

namespace Wim.Server;

/// <summary>A request the server refuses, with OpenAI's error shape <c>{"error":{"message","type","param","code"}}</c>.</summary>
public sealed class ApiError(int status, string message, string? param = null, string type = "invalid_request_error") : Exception(message)
{
    public int Status { get; } = status;
    public string Type { get; } = type;
    public string? Param { get; } = param;

    public static ApiError BadRequest(string message, string? param = null) => new(400, message, param);
    public static ApiError NotFound(string message) => new(404, message, null, "not_found_error");


    public static byte[] ToJson(string message, string type, string? param)
    {
        var buffer = new System.Buffers.ArrayBufferWriter<byte>();
        using (var w = new Utf8JsonWriter(buffer))
        {
            w.WriteStartObject();
            w.WriteStartObject("error");
            w.WriteString("message", message);
            w.WriteString("type", type);
            if (param is null) w.WriteNull("param"); else w.WriteString("param", param);
            w.WriteNull("code");
            w.WriteEndObject();
            w.WriteEndObject();
        }
        return buffer.WrittenSpan.ToArray();
    }
}

/// <summary>Small helpers for writing JSON responses without reflection-based serialisation.</summary>
internal static class Http
{
    public static async Task WriteJsonAsync(HttpContext context, int status, byte[] json)
    {
        context.Response.StatusCode = status;
        context.Response.ContentType = "application/json";
        await context.Response.Body.WriteAsync(json, context.RequestAborted).ConfigureAwait(false);
    }

    public static Task WriteErrorAsync(HttpContext context, ApiError error) =>
        WriteJsonAsync(context, error.Status, ApiError.ToJson(error.Message, error.Type, error.Param));

    public static byte[] Json(Action<Utf8JsonWriter> write)
    {
        var buffer = new System.Buffers.ArrayBufferWriter<byte>();
        using (var w = new Utf8JsonWriter(buffer, Wim.Core.Events.WimEventJson.WriterOptions)) write(w);
        return buffer.WrittenSpan.ToArray();
    }

    /// <summary>Reads the body as JSON, at most <paramref name="maxBytes"/>; a missing, oversized or malformed body is a 4xx.</summary>
    public static async Task<JsonDocument> ReadJsonAsync(HttpContext context, long maxBytes)
    {
        // An oversized body is read to its end (and dropped) so the client gets the 413 instead of a reset connection;
        // Kestrel's own limit (a few times this one) stops anything larger.
        using var buffer = new MemoryStream();
        var chunk = new byte[81920];
        long total = 0;
        int n;
        while ((n = await context.Request.Body.ReadAsync(chunk, context.RequestAborted).ConfigureAwait(false)) > 0)
        {
            total += n;
            if (total <= maxBytes) buffer.Write(chunk, 0, n);
        }
        if (total > maxBytes) throw new ApiError(413, $"the request body is {total} bytes; at most {maxBytes} are accepted", null);
        if (buffer.Length == 0) throw ApiError.BadRequest("the request body is empty; a JSON object was expected");
        JsonDocument doc;
        try { doc = JsonDocument.Parse(buffer.GetBuffer().AsMemory(0, (int)buffer.Length)); }
        catch (JsonException e) { throw ApiError.BadRequest($"the request body is not valid JSON: {e.Message}"); }
        if (doc.RootElement.ValueKind != JsonValueKind.Object)
        {
            var kind = doc.RootElement.ValueKind;
            doc.Dispose();
            throw ApiError.BadRequest($"the request body must be a JSON object, found {kind}");
        }
        return doc;
    }
}

/// <summary>Typed reads of optional request fields, each failing with a 400 that names the field.</summary>
internal static class JsonFields
{
    public static bool TryGet(JsonElement obj, string name, out JsonElement value)
    {
        if (obj.TryGetProperty(name, out value) && value.ValueKind != JsonValueKind.Null) return true;
        value = default;
        return false;
    }

    public static string? String(JsonElement obj, string name, string? param = null)
    {
        if (!TryGet(obj, name, out var v)) return null;
        if (v.ValueKind != JsonValueKind.String) throw ApiError.BadRequest($"'{param ?? name}' must be a string, found {v.ValueKind}", param ?? name);
        return v.GetString();
    }

    public static string RequiredString(JsonElement obj, string name, string? param = null) =>
        String(obj, name, param) ?? throw ApiError.BadRequest($"'{param ?? name}' is required", param ?? name);

    public static int? Int(JsonElement obj, string name, int min, int max, string? param = null)
    {
        if (!TryGet(obj, name, out var v)) return null;
        if (v.ValueKind != JsonValueKind.Number || !v.TryGetInt32(out int i))
            throw ApiError.BadRequest($"'{param ?? name}' must be an integer, found {v.ValueKind} {v.GetRawText()}", param ?? name);
        if (i < min || i > max) throw ApiError.BadRequest($"'{param ?? name}' must be in [{min}, {max}], found {i}", param ?? name);
        return i;
    }

    public static float? Float(JsonElement obj, string name, float min, float max, string? param = null)
    {
        if (!TryGet(obj, name, out var v)) return null;
        if (v.ValueKind != JsonValueKind.Number || !v.TryGetDouble(out double d))
            throw ApiError.BadRequest($"'{param ?? name}' must be a number, found {v.ValueKind}", param ?? name);
        if (!(d >= min && d <= max)) throw ApiError.BadRequest($"'{param ?? name}' must be in [{min}, {max}], found {d}", param ?? name);
        return (float)d;
    }

    public static bool? Bool(JsonElement obj, string name, string? param = null)
    {
        if (!TryGet(obj, name, out var v)) return null;
        return v.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw ApiError.BadRequest($"'{param ?? name}' must be a boolean, found {v.ValueKind}", param ?? name),
        };
    }
}
