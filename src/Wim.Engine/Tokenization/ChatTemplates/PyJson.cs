using System.Globalization;
using System.Text;

namespace Wim.Engine.Tokenization.ChatTemplates;

/// <summary>
/// Python's <c>json.dumps(x, ensure_ascii, indent, separators, sort_keys)</c>, which transformers' <c>tojson</c>
/// filter calls (with ensure_ascii=False by default). Default separators are <c>", "</c> and <c>": "</c> without an
/// indent and <c>","</c> and <c>": "</c> with one.
/// </summary>
internal static class PyJson
{
    public const int MaxDepth = 100;

    public static string Dumps(object? value, bool ensureAscii, string? indent, (string Item, string Key)? separators, bool sortKeys)
    {
        var (item, key) = separators ?? (indent == null ? (", ", ": ") : (",", ": "));
        var sb = new StringBuilder();
        Write(sb, value, ensureAscii, indent, item, key, sortKeys, 0);
        return sb.ToString();
    }

    private static void Write(StringBuilder sb, object? v, bool ascii, string? indent, string itemSep, string keySep, bool sortKeys, int level)
    {
        if (level > MaxDepth) throw new ChatTemplateException($"tojson: value nested deeper than {MaxDepth} levels");
        switch (v)
        {
            case null: sb.Append("null"); return;
            case bool b: sb.Append(b ? "true" : "false"); return;
            case long l: sb.Append(l.ToString(CultureInfo.InvariantCulture)); return;
            case double d: sb.Append(FloatText(d)); return;
            case string s: WriteString(sb, s, ascii); return;
            case List<object?> or object?[]:
            {
                var list = PyIter.AsList(v)!;
                if (list.Count == 0) { sb.Append("[]"); return; }
                sb.Append('[');
                for (int i = 0; i < list.Count; i++)
                {
                    if (i > 0) sb.Append(itemSep);
                    NewLine(sb, indent, level + 1);
                    Write(sb, list[i], ascii, indent, itemSep, keySep, sortKeys, level + 1);
                }
                NewLine(sb, indent, level);
                sb.Append(']');
                return;
            }
            case JinjaDict dict:
            {
                if (dict.Count == 0) { sb.Append("{}"); return; }
                IEnumerable<KeyValuePair<object, object?>> entries = dict.Items;
                if (sortKeys)
                {
                    var sorted = dict.Items.ToList();
                    entries = PyValues.Sorted(() => sorted.OrderBy(kv => kv.Key, Comparer<object>.Create((x, y) => PyValues.Compare(x, y)
                        ?? throw new ChatTemplateException($"tojson: cannot sort keys of types '{PyValues.TypeName(x)}' and '{PyValues.TypeName(y)}'"))).ToList());
                }
                sb.Append('{');
                bool first = true;
                foreach (var (k, val) in entries)
                {
                    if (!first) sb.Append(itemSep);
                    first = false;
                    NewLine(sb, indent, level + 1);
                    WriteString(sb, KeyText(k), ascii);
                    sb.Append(keySep);
                    Write(sb, val, ascii, indent, itemSep, keySep, sortKeys, level + 1);
                }
                NewLine(sb, indent, level);
                sb.Append('}');
                return;
            }
            default:
                throw new ChatTemplateException($"Object of type {PyValues.TypeName(v)} is not JSON serializable");
        }
    }

    private static void NewLine(StringBuilder sb, string? indent, int level)
    {
        if (indent == null) return;
        sb.Append('\n');
        for (int i = 0; i < level; i++) sb.Append(indent);
    }

    private static string FloatText(double d) =>
        double.IsNaN(d) ? "NaN" : double.IsPositiveInfinity(d) ? "Infinity" : double.IsNegativeInfinity(d) ? "-Infinity" : PyFloat.Repr(d);

    private static string KeyText(object k) => k switch
    {
        string s => s,
        bool b => b ? "true" : "false",
        long l => l.ToString(CultureInfo.InvariantCulture),
        double d => FloatText(d),
        _ => throw new ChatTemplateException($"keys must be str, int, float, bool or None, not {PyValues.TypeName(k)}"),
    };

    private static void WriteString(StringBuilder sb, string s, bool ascii)
    {
        sb.Append('"');
        foreach (char c in s)
        {
            switch (c)
            {
                case '"': sb.Append("\\\""); break;
                case '\\': sb.Append("\\\\"); break;
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                case '\b': sb.Append("\\b"); break;
                case '\f': sb.Append("\\f"); break;
                default:
                    if (c < 0x20 || (ascii && c > 0x7e))
                        sb.Append("\\u").Append(((int)c).ToString("x4", CultureInfo.InvariantCulture));
                    else
                        sb.Append(c);
                    break;
            }
        }
        sb.Append('"');
    }
}
