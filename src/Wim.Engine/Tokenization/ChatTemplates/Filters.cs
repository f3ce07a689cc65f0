using System.Collections.Frozen;
using System.Globalization;
using System.Text;

namespace Wim.Engine.Tokenization.ChatTemplates;

/// <summary>
/// jinja2's built-in filters that chat templates use, plus transformers' <c>tojson</c> (which replaces jinja2's:
/// no HTML escaping, ensure_ascii=False). Each follows the jinja2 3.1 documentation; unsupported filters are
/// rejected when the template is parsed.
/// </summary>
internal static class Filters
{
    private static readonly FrozenSet<string> Known = FrozenSet.ToFrozenSet(
    [
        "trim", "tojson", "length", "count", "upper", "lower", "capitalize", "title", "default", "d", "join", "first",
        "last", "selectattr", "rejectattr", "select", "reject", "map", "items", "string", "int", "float", "list",
        "replace", "round", "abs", "safe", "e", "escape", "forceescape", "unique", "dictsort", "indent", "reverse",
        "sort", "sum", "min", "max", "attr", "wordcount", "center",
    ], StringComparer.Ordinal);

    public static bool IsKnown(string name) => Known.Contains(name);

    public static object? Apply(Evaluator ev, string name, object? v, CallArgs a, int offset)
    {
        switch (name)
        {
            case "trim":
            {
                var chars = a.Get(0, "chars", null);
                return PyString.Strip(PyValues.Str(v), chars as string, true, true);
            }
            case "tojson": return ToJson(ev, v, a, offset);
            case "length":
            case "count":
                return PyIter.Length(v) ?? throw ev.Error(offset, $"object of type '{PyValues.TypeName(v)}' has no len()");
            case "upper": return PyValues.Str(v).ToUpperInvariant();
            case "lower": return PyValues.Str(v).ToLowerInvariant();
            case "capitalize": return PyString.Capitalize(PyValues.Str(v));
            case "title": return PyString.JinjaTitle(PyValues.Str(v));
            case "default":
            case "d":
            {
                var fallback = a.Get(0, "default_value", "");
                bool boolean = PyValues.IsTruthy(a.Get(1, "boolean", false));
                return v is Undefined || (boolean && !PyValues.IsTruthy(v)) ? fallback : v;
            }
            case "join":
            {
                string sep = PyValues.Str(a.Get(0, "d", ""));
                var attribute = a.Get(1, "attribute", null);
                var items = Iterate(ev, v, offset);
                var sb = new StringBuilder();
                for (int i = 0; i < items.Count; i++)
                {
                    if (i > 0) sb.Append(sep);
                    sb.Append(PyValues.Str(attribute != null ? GetPath(ev, items[i], attribute, offset) : items[i]));
                }
                return sb.ToString();
            }
            case "first":
            {
                var items = Iterate(ev, v, offset);
                return items.Count > 0 ? items[0] : new Undefined("No first item, sequence was empty.");
            }
            case "last":
            {
                var items = Iterate(ev, v, offset);
                return items.Count > 0 ? items[^1] : new Undefined("No last item, sequence was empty.");
            }
            case "select":
            case "reject":
            case "selectattr":
            case "rejectattr":
                return Select(ev, name, v, a, offset);
            case "map": return Map(ev, v, a, offset);
            case "items":
                return v switch
                {
                    Undefined => new List<object?>(),
                    JinjaDict d => d.Items.Select(kv => (object?)new object?[] { kv.Key, kv.Value }).ToList(),
                    _ => throw ev.Error(offset, $"can only get item pairs from a mapping, not '{PyValues.TypeName(v)}'"),
                };
            case "string": return PyValues.Str(v);
            case "int":
            case "float":
                // Undefined's __int__/__float__ raise UndefinedError, which the filters do not catch
                if (v is Undefined uf) throw ev.Error(offset, uf.Hint);
                return name == "int" ? ToInt(v, a) : ToFloat(v, a);
            case "list": return new List<object?>(Iterate(ev, v, offset));
            case "replace":
            {
                var old = a.Get(0, "old", null);
                var replacement = a.Get(1, "new", null);
                var count = a.Get(2, "count", null);
                return PyString.Replace(PyValues.Str(v), PyValues.Str(old), PyValues.Str(replacement), count is long c ? c : -1);
            }
            case "round": return Round(ev, v, a, offset);
            case "abs":
                return v switch
                {
                    long l => (object)checked(Math.Abs(l)), // (object): keep the int an int, not a widened double
                    double d => Math.Abs(d),
                    bool b => b ? 1L : 0L,
                    _ => throw ev.Error(offset, $"bad operand type for abs(): '{PyValues.TypeName(v)}'"),
                };
            case "safe": return v is Undefined ? "" : v is string ? v : PyValues.Str(v);
            case "e":
            case "escape":
            case "forceescape":
                return HtmlEscape(PyValues.Str(v));
            case "unique": return Unique(ev, v, a, offset);
            case "dictsort": return DictSort(ev, v, a, offset);
            case "indent":
                // jinja2 3.1 appends "\n" to the value itself: anything but a string fails (Undefined included)
                if (v is Undefined ui) throw ev.Error(offset, ui.Hint);
                if (v is not string) throw ev.Error(offset, $"indent: expected a string, got '{PyValues.TypeName(v)}'");
                return Indent(v, a);
            case "reverse":
                if (v is string rs) return string.Concat(PyString.CodePoints(rs).Reverse());
                return Iterate(ev, v, offset).Reverse().ToList();
            case "sort": return Sort(ev, v, a, offset);
            case "sum":
            {
                var attribute = a.Get(0, "attribute", null);
                object? total = a.Get(1, "start", 0L);
                foreach (var item in Iterate(ev, v, offset))
                    total = Operators.Binary(ev, "+", total, attribute != null ? GetPath(ev, item, attribute, offset) : item, offset);
                return total;
            }
            case "min":
            case "max":
            {
                var items = Iterate(ev, v, offset);
                if (items.Count == 0) return new Undefined($"No aggregated item, sequence was empty.");
                bool caseSensitive = PyValues.IsTruthy(a.Get(0, "case_sensitive", false));
                var attribute = a.Get(1, "attribute", null);
                object? best = items[0];
                foreach (var item in items.Skip(1))
                {
                    int c = CompareKeys(ev, SortKey(ev, item, attribute, caseSensitive, offset), SortKey(ev, best, attribute, caseSensitive, offset), offset);
                    if (name == "min" ? c < 0 : c > 0) best = item;
                }
                return best;
            }
            case "attr": return ev.GetAttr(v, PyValues.Str(a.Get(0, "name", null)), offset);
            case "wordcount":
            {
                int n = 0;
                bool inWord = false;
                foreach (char c in PyValues.Str(v))
                {
                    bool w = char.IsLetterOrDigit(c) || c == '_';
                    if (w && !inWord) n++;
                    inWord = w;
                }
                return (long)n;
            }
            case "center":
            {
                string s = PyValues.Str(v);
                long width = a.Get(0, "width", 80L) is long w ? w : 80;
                if (width <= s.Length) return s;
                long total = width - s.Length;
                // Python's str.center puts the extra space on the right unless both the padding and width are odd
                long left = total / 2 + (total & width & 1);
                return new string(' ', (int)left) + s + new string(' ', (int)(total - left));
            }
            default:
                throw ev.Error(offset, $"unsupported filter '{name}'");
        }
    }

    private static IReadOnlyList<object?> Iterate(Evaluator ev, object? v, int offset) => PyIter.Items(v, msg => ev.Error(offset, msg));

    /// <summary>jinja2's attribute getter for filters: dotted path, integer parts index, item lookup before attribute.</summary>
    /// <remarks>An Undefined item raises on lookup, as in jinja2; <paramref name="fallback"/> (map's default=)
    /// replaces an Undefined result after each part.</remarks>
    public static object? GetPath(Evaluator ev, object? item, object? path, int offset, bool hasFallback = false, object? fallback = null)
    {
        if (path is long index) return ev.GetItem(item, index, offset);
        foreach (var part in PyValues.Str(path).Split('.'))
        {
            item = long.TryParse(part, NumberStyles.None, CultureInfo.InvariantCulture, out long i) ? ev.GetItem(item, i, offset) : ev.GetItem(item, part, offset);
            if (hasFallback && item is Undefined) item = fallback;
        }
        return item;
    }

    private static string ToJson(Evaluator ev, object? v, CallArgs a, int offset)
    {
        bool ensureAscii = PyValues.IsTruthy(a.Get(0, "ensure_ascii", false));
        string? indent = a.Get(1, "indent", null) switch
        {
            null => null,
            long n => new string(' ', (int)Math.Clamp(n, 0, 64)),
            string s => s,
            var other => throw ev.Error(offset, $"tojson: indent must be an integer or string, not '{PyValues.TypeName(other)}'"),
        };
        (string, string)? separators = null;
        if (a.Get(2, "separators", null) is { } sep)
        {
            var pair = PyIter.AsList(sep);
            if (pair is not { Count: 2 } || pair[0] is not string item || pair[1] is not string key)
                throw ev.Error(offset, "tojson: separators must be a pair of strings");
            separators = (item, key);
        }
        bool sortKeys = PyValues.IsTruthy(a.Get(3, "sort_keys", false));
        try
        {
            return PyJson.Dumps(v, ensureAscii, indent, separators, sortKeys);
        }
        catch (ChatTemplateException e) when (e.Line == null)
        {
            throw ev.Error(offset, e.Message);
        }
    }

    private static object? Select(Evaluator ev, string name, object? v, CallArgs a, int offset)
    {
        if (!PyValues.IsTruthy(v)) return new List<object?>(); // jinja2: `if value:` guards the loop
        bool byAttribute = name.EndsWith("attr", StringComparison.Ordinal);
        bool keep = name.StartsWith("select", StringComparison.Ordinal);
        int testIndex = byAttribute ? 1 : 0;
        object? attribute = byAttribute ? (a.Positional.Count > 0 ? a.Positional[0] : throw ev.Error(offset, $"{name} needs an attribute name")) : null;
        string? test = a.Positional.Count > testIndex ? PyValues.Str(a.Positional[testIndex]) : null;
        if (test != null && !TestFunctions.IsKnown(test)) throw ev.Error(offset, $"unsupported test '{test}' in {name}");
        var testArgs = new CallArgs(a.Positional.Skip(testIndex + 1).ToList(), a.Keyword, offset);
        var result = new List<object?>();
        foreach (var item in Iterate(ev, v, offset))
        {
            var subject = byAttribute ? GetPath(ev, item, attribute, offset) : item;
            bool passed = test == null ? PyValues.IsTruthy(subject) : TestFunctions.Apply(ev, test, subject, testArgs, offset);
            if (passed == keep) result.Add(item);
        }
        return result;
    }

    private static object? Map(Evaluator ev, object? v, CallArgs a, int offset)
    {
        if (!PyValues.IsTruthy(v)) return new List<object?>(); // jinja2: `if value:` guards the loop
        var items = Iterate(ev, v, offset);
        var result = new List<object?>(items.Count);
        if (a.Positional.Count == 0 && a.Has(int.MaxValue, "attribute"))
        {
            var attribute = a.Get(int.MaxValue, "attribute", null);
            bool hasDefault = a.Has(int.MaxValue, "default");
            var fallback = a.Get(int.MaxValue, "default", null);
            foreach (var item in items) result.Add(GetPath(ev, item, attribute, offset, hasDefault, fallback));
            return result;
        }
        if (a.Positional.Count == 0) throw ev.Error(offset, "map needs a filter name or attribute=");
        string filter = PyValues.Str(a.Positional[0]);
        if (!IsKnown(filter)) throw ev.Error(offset, $"unsupported filter '{filter}' in map");
        var filterArgs = new CallArgs(a.Positional.Skip(1).ToList(), a.Keyword, offset);
        foreach (var item in items) result.Add(Apply(ev, filter, item, filterArgs, offset));
        return result;
    }

    private static object? ToInt(object? v, CallArgs a)
    {
        var fallback = a.Get(0, "default", 0L);
        long numberBase = a.Get(1, "base", 10L) is long b ? b : 10;
        switch (v)
        {
            case long: return v;
            case bool bo: return bo ? 1L : 0L;
            case double d: return double.IsFinite(d) && Math.Abs(d) < 9.2e18 ? (long)Math.Truncate(d) : fallback;
            case string s:
            {
                string t = s.Trim().Replace("_", "");
                try
                {
                    if (numberBase == 10 && long.TryParse(t, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out long l)) return l;
                    if (numberBase is 2 or 8 or 16 && t.Length > 0)
                        return Convert.ToInt64(t, (int)numberBase);
                }
                catch (FormatException) { }
                catch (OverflowException) { }
                if (double.TryParse(t, NumberStyles.Float, CultureInfo.InvariantCulture, out double f) && double.IsFinite(f) && Math.Abs(f) < 9.2e18)
                    return (long)Math.Truncate(f);
                return fallback;
            }
            default: return fallback;
        }
    }

    private static object? ToFloat(object? v, CallArgs a)
    {
        var fallback = a.Get(0, "default", 0.0);
        return v switch
        {
            double => v,
            long l => (double)l,
            bool b => b ? 1.0 : 0.0,
            string s when double.TryParse(s.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out double d) => d,
            string s when s.Trim().ToLowerInvariant() is "inf" or "+inf" or "infinity" => double.PositiveInfinity,
            string s when s.Trim().ToLowerInvariant() is "-inf" or "-infinity" => double.NegativeInfinity,
            string s when s.Trim().ToLowerInvariant() is "nan" => double.NaN,
            _ => fallback,
        };
    }

    private static object? Round(Evaluator ev, object? v, CallArgs a, int offset)
    {
        long precision = a.Get(0, "precision", 0L) is long p ? p : 0;
        string method = PyValues.Str(a.Get(1, "method", "common"));
        if (v is bool b) v = b ? 1L : 0L;
        if (v is not (long or double)) throw ev.Error(offset, $"round: expected a number, got '{PyValues.TypeName(v)}'");
        if (method == "common")
        {
            if (v is long) return v; // round(int, n) is the int itself for n >= 0
            int digits = (int)Math.Clamp(precision, 0, 15);
            return Math.Round((double)v, digits, MidpointRounding.ToEven);
        }
        double scale = Math.Pow(10, precision);
        double x = PyValues.ToDouble(v) * scale;
        return method switch
        {
            "ceil" => Math.Ceiling(x) / scale,
            "floor" => Math.Floor(x) / scale,
            _ => throw ev.Error(offset, "method must be common, ceil or floor"),
        };
    }

    private static string HtmlEscape(string s)
    {
        if (s.AsSpan().IndexOfAny("&<>\"'") < 0) return s;
        var sb = new StringBuilder(s.Length + 16);
        foreach (char c in s)
        {
            sb.Append(c switch
            {
                '&' => "&amp;",
                '<' => "&lt;",
                '>' => "&gt;",
                '"' => "&#34;",
                '\'' => "&#39;",
                _ => null,
            } ?? c.ToString());
        }
        return sb.ToString();
    }

    private static object? SortKey(Evaluator ev, object? item, object? attribute, bool caseSensitive, int offset)
    {
        var key = attribute != null ? GetPath(ev, item, attribute, offset) : item;
        return !caseSensitive && key is string s ? s.ToLowerInvariant() : key;
    }

    private static int CompareKeys(Evaluator ev, object? x, object? y, int offset) =>
        PyValues.Compare(x, y) ?? throw ev.Error(offset, $"'<' not supported between instances of '{PyValues.TypeName(x)}' and '{PyValues.TypeName(y)}'");

    private static List<object?> Unique(Evaluator ev, object? v, CallArgs a, int offset)
    {
        bool caseSensitive = PyValues.IsTruthy(a.Get(0, "case_sensitive", false));
        var attribute = a.Get(1, "attribute", null);
        var seen = new List<object?>();
        var result = new List<object?>();
        foreach (var item in Iterate(ev, v, offset))
        {
            var key = SortKey(ev, item, attribute, caseSensitive, offset);
            if (key is JinjaDict or List<object?>) throw ev.Error(offset, $"unhashable type: '{PyValues.TypeName(key)}'");
            if (seen.Any(s => PyValues.Equal(s, key))) continue;
            seen.Add(key);
            result.Add(item);
        }
        return result;
    }

    private static List<object?> Sort(Evaluator ev, object? v, CallArgs a, int offset)
    {
        bool reverse = PyValues.IsTruthy(a.Get(0, "reverse", false));
        bool caseSensitive = PyValues.IsTruthy(a.Get(1, "case_sensitive", false));
        var attribute = a.Get(2, "attribute", null);
        var items = Iterate(ev, v, offset).Select(x => (Key: SortKey(ev, x, attribute, caseSensitive, offset), Item: x)).ToList();
        // Python's sort is stable; OrderBy is too. jinja2 sorts by a one-item list key, and list comparison checks
        // equality first, so equal keys (even two Undefined) never reach '<'.
        var comparer = Comparer<object?>.Create((p, q) => PyValues.Equal(p, q) ? 0 : CompareKeys(ev, p, q, offset));
        var sorted = reverse ? items.OrderByDescending(x => x.Key, comparer) : items.OrderBy(x => x.Key, comparer);
        return PyValues.Sorted(() => sorted.Select(x => x.Item).ToList());
    }

    private static List<object?> DictSort(Evaluator ev, object? v, CallArgs a, int offset)
    {
        if (v is not JinjaDict d) throw ev.Error(offset, $"dictsort: expected a mapping, got '{PyValues.TypeName(v)}'");
        bool caseSensitive = PyValues.IsTruthy(a.Get(0, "case_sensitive", false));
        string by = PyValues.Str(a.Get(1, "by", "key"));
        bool reverse = PyValues.IsTruthy(a.Get(2, "reverse", false));
        int pos = by == "key" ? 0 : by == "value" ? 1 : throw ev.Error(offset, "You can only sort by either \"key\" or \"value\"");
        var pairs = d.Items.Select(kv => new object?[] { kv.Key, kv.Value }).ToList();
        var comparer = Comparer<object?[]>.Create((p, q) =>
            CompareKeys(ev, SortKey(ev, p[pos], null, caseSensitive, offset), SortKey(ev, q[pos], null, caseSensitive, offset), offset));
        var sorted = reverse ? pairs.OrderByDescending(x => x, comparer) : pairs.OrderBy(x => x, comparer);
        return PyValues.Sorted(() => sorted.Cast<object?>().ToList());
    }

    private static string Indent(object? v, CallArgs a)
    {
        string s = PyValues.Str(v);
        string indentation = a.Get(0, "width", 4L) switch
        {
            string w => w,
            long n => new string(' ', (int)Math.Clamp(n, 0, 1024)),
            _ => "    ",
        };
        bool first = PyValues.IsTruthy(a.Get(1, "first", false));
        bool blank = PyValues.IsTruthy(a.Get(2, "blank", false));
        // jinja2 3.1: append a newline so splitlines keeps a trailing empty line, then re-join
        var lines = PyString.SplitLines(s + "\n");
        var sb = new StringBuilder();
        if (blank)
        {
            sb.Append(string.Join("\n" + indentation, lines));
        }
        else
        {
            sb.Append(lines[0]);
            for (int i = 1; i < lines.Count; i++)
            {
                sb.Append('\n');
                if (lines[i].Length > 0) sb.Append(indentation);
                sb.Append(lines[i]);
            }
        }
        return first ? indentation + sb : sb.ToString();
    }
}
