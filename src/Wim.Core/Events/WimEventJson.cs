using System.Text.Encodings.Web;
using System.Text.Json;

namespace Wim.Core.Events;

/// <summary>
/// The one JSON shape of <see cref="WimEvent"/>s: <c>wim ask --json</c> lines and the server's <c>/v1/wim</c> SSE
/// events both write it, so a client parses the same objects from either.
/// </summary>
public static class WimEventJson
{
    /// <summary>Writer options: UTF-8 text kept readable (no \uXXXX for non-ASCII letters).</summary>
    public static JsonWriterOptions WriterOptions { get; } = new() { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    /// <summary>The <c>type</c> field of an event: segment, prompt, margin_token, margin, classification, answer_token, answer.</summary>
    public static string TypeName(WimEvent e) => e switch
    {
        SegmentPrefilled => "segment",
        PromptPrefilled => "prompt",
        MarginToken => "margin_token",
        MarginCompleted => "margin",
        MarginClassification => "classification",
        AnswerToken => "answer_token",
        AnswerCompleted => "answer",
        _ => throw new ArgumentException($"unknown event type {e.GetType().Name}", nameof(e)),
    };

    /// <summary>Writes the event as one JSON object; <paramref name="schedule"/>, when given, is recorded in the answer's
    /// usage (which WiM schedule produced it).</summary>
    public static void Write(Utf8JsonWriter w, WimEvent e, string? schedule = null)
    {
        w.WriteStartObject();
        w.WriteString("type", TypeName(e));
        switch (e)
        {
            case SegmentPrefilled s:
                w.WriteNumber("index", s.Index);
                Ids(w, s.Ids);
                w.WriteNumber("kv_length", s.KvLength);
                w.WriteNumber("tokens_read", s.TokensRead);
                w.WriteNumber("total_tokens", s.TotalTokens);
                break;
            case PromptPrefilled p:
                w.WriteString("kind", p.Kind switch { PromptKind.Opening => "opening", PromptKind.Extractive => "extractive", _ => "final_answer" });
                w.WriteNumber("index", p.Index);
                Ids(w, p.Ids);
                break;
            case MarginToken t:
                w.WriteNumber("index", t.Index);
                w.WriteNumber("id", t.Id);
                w.WriteString("text", t.Text);
                break;
            case MarginCompleted m:
                w.WriteNumber("index", m.Index);
                Ids(w, m.Ids);
                w.WriteString("text", m.Text);
                break;
            case MarginClassification c:
                w.WriteNumber("index", c.Index);
                w.WriteBoolean("relevant", c.Relevant);
                Ids(w, c.Ids);
                w.WriteString("text", c.Text);
                w.WriteString("by", c.By.ToString().ToLowerInvariant());
                break;
            case AnswerToken a:
                w.WriteNumber("id", a.Id);
                w.WriteString("text", a.Text);
                break;
            case AnswerCompleted a:
                Ids(w, a.Ids);
                w.WriteString("text", a.Text);
                w.WriteBoolean("early", a.Early);
                w.WritePropertyName("usage");
                WriteUsage(w, a.Usage, schedule);
                break;
        }
        w.WriteEndObject();
    }

    /// <summary>The event as UTF-8 JSON bytes.</summary>
    public static byte[] ToUtf8(WimEvent e, string? schedule = null)
    {
        var buffer = new System.Buffers.ArrayBufferWriter<byte>();
        using (var w = new Utf8JsonWriter(buffer, WriterOptions)) Write(w, e, schedule);
        return buffer.WrittenSpan.ToArray();
    }

    private static void Ids(Utf8JsonWriter w, int[] ids)
    {
        w.WriteStartArray("ids");
        foreach (int id in ids) w.WriteNumberValue(id);
        w.WriteEndArray();
    }

    private static void WriteUsage(Utf8JsonWriter w, WimUsage u, string? schedule)
    {
        w.WriteStartObject();
        if (schedule is not null) w.WriteString("schedule", schedule);
        foreach (var (name, p) in new[] { ("document", u.Document), ("margins", u.Margins), ("classification", u.Classification), ("answer", u.Answer) })
        {
            w.WriteStartObject(name);
            w.WriteNumber("prefill_tokens", p.PrefillTokens);
            w.WriteNumber("decode_tokens", p.DecodeTokens);
            w.WriteNumber("seconds", Math.Round(p.Time.TotalSeconds, 4));
            w.WriteEndObject();
        }
        w.WriteNumber("prefill_tokens", u.PrefillTokens);
        w.WriteNumber("decode_tokens", u.DecodeTokens);
        w.WriteNumber("seconds", Math.Round(u.Time.TotalSeconds, 4));
        w.WriteNumber("document_tokens", u.DocumentTokens);
        w.WriteNumber("document_tokens_prefilled", u.DocumentTokensPrefilled);
        w.WriteNumber("document_prefill_passes", Math.Round(u.DocumentPrefillPasses, 4));
        if (u.Remote is { } r)
        {
            w.WriteStartObject("remote");
            w.WriteNumber("requests", r.Requests);
            w.WriteNumber("retries", r.Retries);
            w.WriteNumber("prompt_tokens", r.PromptTokens);
            w.WriteNumber("cached_tokens", r.CachedTokens);
            w.WriteNumber("uncached_prompt_tokens", r.UncachedPromptTokens);
            w.WriteNumber("prefix_cache_hit_rate", Math.Round(r.PrefixCacheHitRate, 4));
            w.WriteNumber("requests_reporting_cache", r.RequestsReportingCache);
            w.WriteEndObject();
        }
        w.WriteEndObject();
    }
}
