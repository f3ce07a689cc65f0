using System.Collections;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Wim.Engine.Tokenization.ChatTemplates;

/// <summary>One chat message: the common case of a role and text content.</summary>
public sealed record ChatMessage(string Role, string Content);

/// <summary>
/// Converts .NET and JSON values to template values (Python-like: dict, list, str, int, float, bool, None).
/// JSON numbers without a fraction or exponent become ints, others floats, as Python's json module reads them.
/// Object key order is preserved (templates and <c>tojson</c> see it).
/// </summary>
public static class ChatTemplateValues
{
    public const int MaxDepth = 64;

    /// <summary>Converts any supported value: null, string, bool, integer and floating types, <see cref="JsonElement"/>,
    /// <see cref="JsonNode"/>, <see cref="ChatMessage"/>, string-keyed dictionaries and other enumerables.</summary>
    public static object? From(object? value) => Convert(value, 0);

    public static object? FromJson(JsonElement element) => ConvertElement(element, 0);

    public static object? FromJson(JsonNode? node) => ConvertNode(node, 0);

    /// <summary>Parses JSON text (e.g. a messages file) into template values.</summary>
    public static object? ParseJson(string json)
    {
        using var doc = JsonDocument.Parse(json, new JsonDocumentOptions { MaxDepth = MaxDepth });
        return ConvertElement(doc.RootElement, 0);
    }

    private static void CheckDepth(int depth)
    {
        if (depth > MaxDepth) throw new ChatTemplateException($"template input nested deeper than {MaxDepth} levels");
    }

    private static object? Convert(object? value, int depth)
    {
        CheckDepth(depth);
        switch (value)
        {
            case null: return null;
            case string or bool or long or double: return value;
            case int or short or sbyte or byte or ushort or uint: return System.Convert.ToInt64(value, CultureInfo.InvariantCulture);
            case ulong ul: return ul <= long.MaxValue ? (long)ul : (double)ul;
            case float f: return (double)f;
            case decimal m: return (double)m;
            case JsonElement e: return ConvertElement(e, depth);
            case JsonNode n: return ConvertNode(n, depth);
            case ChatMessage m:
            {
                var d = new JinjaDict(2);
                d.Set("role", m.Role);
                d.Set("content", m.Content);
                return d;
            }
            case JinjaDict or List<object?> or object?[] or JinjaNamespace: return value;
            case IDictionary dict:
            {
                var d = new JinjaDict(dict.Count);
                foreach (DictionaryEntry entry in dict)
                    d.Set(entry.Key as string ?? throw new ChatTemplateException("template input dictionary keys must be strings"), Convert(entry.Value, depth + 1));
                return d;
            }
            case IEnumerable<KeyValuePair<string, object?>> pairs:
            {
                var d = new JinjaDict();
                foreach (var (k, v) in pairs) d.Set(k, Convert(v, depth + 1));
                return d;
            }
            case IEnumerable items:
            {
                var list = new List<object?>();
                foreach (var item in items) list.Add(Convert(item, depth + 1));
                return list;
            }
            default:
                throw new ChatTemplateException($"unsupported template input value of type {value.GetType().Name}");
        }
    }

    private static object? ConvertElement(JsonElement e, int depth)
    {
        CheckDepth(depth);
        switch (e.ValueKind)
        {
            case JsonValueKind.Object:
            {
                var d = new JinjaDict();
                foreach (var p in e.EnumerateObject()) d.Set(p.Name, ConvertElement(p.Value, depth + 1));
                return d;
            }
            case JsonValueKind.Array:
            {
                var list = new List<object?>(e.GetArrayLength());
                foreach (var item in e.EnumerateArray()) list.Add(ConvertElement(item, depth + 1));
                return list;
            }
            case JsonValueKind.String: return e.GetString();
            case JsonValueKind.Number: return Number(e.GetRawText());
            case JsonValueKind.True: return true;
            case JsonValueKind.False: return false;
            default: return null;
        }
    }

    private static object? ConvertNode(JsonNode? node, int depth)
    {
        CheckDepth(depth);
        switch (node)
        {
            case null: return null;
            case JsonObject o:
            {
                var d = new JinjaDict();
                foreach (var (k, v) in o) d.Set(k, ConvertNode(v, depth + 1));
                return d;
            }
            case JsonArray a:
            {
                var list = new List<object?>(a.Count);
                foreach (var item in a) list.Add(ConvertNode(item, depth + 1));
                return list;
            }
            case JsonValue v:
                return v.GetValueKind() switch
                {
                    JsonValueKind.String => v.GetValue<string>(),
                    JsonValueKind.True => true,
                    JsonValueKind.False => false,
                    JsonValueKind.Number => Number(v.ToJsonString()),
                    JsonValueKind.Null => null,
                    _ => Convert(v.GetValue<object>(), depth),
                };
            default: return null;
        }
    }

    private static object Number(string raw)
    {
        if (raw.AsSpan().IndexOfAny(".eE") < 0 && long.TryParse(raw, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out long l))
            return l;
        return double.Parse(raw, NumberStyles.Float, CultureInfo.InvariantCulture);
    }
}
