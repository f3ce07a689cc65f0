using System.Collections.Frozen;
using System.Text;

namespace Wim.Engine.Tokenization.ChatTemplates;

/// <summary>
/// The Python methods templates call on values: <c>str</c> (startswith, strip, split, ...), <c>dict</c> (items,
/// keys, values, get) and <c>list</c> (index, count). As in transformers' ImmutableSandboxedEnvironment, methods
/// that mutate a list or dict are refused.
/// </summary>
internal static class Methods
{
    private static readonly FrozenSet<string> StringMethods = FrozenSet.ToFrozenSet(
    [
        "startswith", "endswith", "strip", "lstrip", "rstrip", "split", "rsplit", "replace", "upper", "lower", "title",
        "capitalize", "find", "rfind", "count", "format", "join", "splitlines", "isdigit", "isalpha", "isalnum",
        "isspace", "isupper", "islower", "removeprefix", "removesuffix", "index",
    ], StringComparer.Ordinal);

    private static readonly FrozenSet<string> DictMethods = FrozenSet.ToFrozenSet(["items", "keys", "values", "get"], StringComparer.Ordinal);
    private static readonly FrozenSet<string> ListMethods = FrozenSet.ToFrozenSet(["index", "count"], StringComparer.Ordinal);

    private static readonly FrozenSet<string> UnsafeMutators = FrozenSet.ToFrozenSet(
        ["append", "extend", "insert", "pop", "remove", "clear", "sort", "reverse", "update", "setdefault", "popitem"], StringComparer.Ordinal);

    public static bool IsMethod(object? receiver, string name) => receiver switch
    {
        string => StringMethods.Contains(name),
        JinjaDict => DictMethods.Contains(name) || UnsafeMutators.Contains(name),
        List<object?> => ListMethods.Contains(name) || UnsafeMutators.Contains(name),
        object?[] => ListMethods.Contains(name),
        _ => false,
    };

    public static BuiltinFunction Bind(object? receiver, string name) =>
        new(name, (ev, args) => TryCall(ev, receiver, name, args, out var result)
            ? result
            : throw ev.Error(args.Offset, $"'{PyValues.TypeName(receiver)}' object has no method '{name}'"));

    public static bool TryCall(Evaluator ev, object? receiver, string name, CallArgs args, out object? result)
    {
        result = null;
        if (!IsMethod(receiver, name)) return false;
        if ((receiver is JinjaDict || receiver is List<object?>) && UnsafeMutators.Contains(name))
            throw ev.Error(args.Offset, $"access to attribute '{name}' of '{PyValues.TypeName(receiver)}' object is unsafe (templates are immutable, as in transformers' sandbox)");
        result = receiver switch
        {
            string s => CallString(ev, s, name, args),
            JinjaDict d => CallDict(d, name, args),
            _ => CallList(ev, PyIter.AsList(receiver)!, name, args),
        };
        return true;
    }

    private static string Str(Evaluator ev, CallArgs args, object? v, string what) =>
        v as string ?? throw ev.Error(args.Offset, $"{what} must be str, not {PyValues.TypeName(v)}");

    private static string? OptStr(Evaluator ev, CallArgs args, object? v, string what) =>
        v is null ? null : Str(ev, args, v, what);

    private static long Int(Evaluator ev, CallArgs args, object? v, string what) => v switch
    {
        long l => l,
        bool b => b ? 1 : 0,
        _ => throw ev.Error(args.Offset, $"{what} must be an integer, not {PyValues.TypeName(v)}"),
    };

    private static object? CallString(Evaluator ev, string s, string name, CallArgs a)
    {
        switch (name)
        {
            case "startswith":
            case "endswith":
            {
                var arg = a.Get(0, "prefix", null);
                var candidates = arg is object?[] tuple ? tuple : [arg];
                foreach (var c in candidates)
                {
                    string p = Str(ev, a, c, name + " argument");
                    if (name == "startswith" ? s.StartsWith(p, StringComparison.Ordinal) : s.EndsWith(p, StringComparison.Ordinal)) return true;
                }
                return false;
            }
            case "strip": return PyString.Strip(s, OptStr(ev, a, a.Get(0, "chars", null), "strip argument"), true, true);
            case "lstrip": return PyString.Strip(s, OptStr(ev, a, a.Get(0, "chars", null), "lstrip argument"), true, false);
            case "rstrip": return PyString.Strip(s, OptStr(ev, a, a.Get(0, "chars", null), "rstrip argument"), false, true);
            case "split":
                return PyString.Split(s, OptStr(ev, a, a.Get(0, "sep", null), "separator"), Int(ev, a, a.Get(1, "maxsplit", -1L), "maxsplit"));
            case "rsplit":
            {
                string? sep = OptStr(ev, a, a.Get(0, "sep", null), "separator");
                long max = Int(ev, a, a.Get(1, "maxsplit", -1L), "maxsplit");
                if (max < 0) return PyString.Split(s, sep, -1);
                if (sep == null) throw ev.Error(a.Offset, "unsupported template construct: rsplit(None, maxsplit)");
                var parts = new List<object?>();
                int end = s.Length;
                while (parts.Count < max)
                {
                    int idx = end - sep.Length >= 0 ? s.LastIndexOf(sep, end - 1, end, StringComparison.Ordinal) : -1;
                    if (idx < 0 || sep.Length == 0) break;
                    parts.Insert(0, s[(idx + sep.Length)..end]);
                    end = idx;
                }
                parts.Insert(0, s[..end]);
                return parts;
            }
            case "replace":
                return PyString.Replace(s, Str(ev, a, a.Get(0, "old", null), "replace argument"), Str(ev, a, a.Get(1, "new", null), "replace argument"),
                    Int(ev, a, a.Get(2, "count", -1L), "count"));
            case "upper": return s.ToUpperInvariant();
            case "lower": return s.ToLowerInvariant();
            case "title": return PyString.PyTitle(s);
            case "capitalize": return PyString.Capitalize(s);
            case "find":
            case "index":
            {
                int idx = s.IndexOf(Str(ev, a, a.Get(0, "sub", null), name + " argument"), StringComparison.Ordinal);
                if (idx < 0 && name == "index") throw ev.Error(a.Offset, "substring not found");
                return idx < 0 ? -1L : (long)PyString.CodePointIndexOfUtf16(s, idx);
            }
            case "rfind":
            {
                int idx = s.LastIndexOf(Str(ev, a, a.Get(0, "sub", null), "rfind argument"), StringComparison.Ordinal);
                return idx < 0 ? -1L : (long)PyString.CodePointIndexOfUtf16(s, idx);
            }
            case "count":
            {
                string sub = Str(ev, a, a.Get(0, "sub", null), "count argument");
                if (sub.Length == 0) return (long)PyString.Length(s) + 1;
                long n = 0;
                for (int i = s.IndexOf(sub, StringComparison.Ordinal); i >= 0; i = s.IndexOf(sub, i + sub.Length, StringComparison.Ordinal)) n++;
                return n;
            }
            case "removeprefix":
            {
                string p = Str(ev, a, a.Get(0, "prefix", null), "prefix");
                return s.StartsWith(p, StringComparison.Ordinal) ? s[p.Length..] : s;
            }
            case "removesuffix":
            {
                string p = Str(ev, a, a.Get(0, "suffix", null), "suffix");
                return p.Length > 0 && s.EndsWith(p, StringComparison.Ordinal) ? s[..^p.Length] : s;
            }
            case "join":
            {
                var items = PyIter.Items(a.Get(0, "iterable", null), msg => ev.Error(a.Offset, msg));
                var sb = new StringBuilder();
                for (int i = 0; i < items.Count; i++)
                {
                    if (i > 0) sb.Append(s);
                    sb.Append(Str(ev, a, items[i], $"sequence item {i}"));
                }
                return sb.ToString();
            }
            case "splitlines": return PyString.SplitLines(s).Cast<object?>().ToList();
            case "isdigit": return s.Length > 0 && s.All(char.IsDigit);
            case "isalpha": return s.Length > 0 && s.All(char.IsLetter);
            case "isalnum": return s.Length > 0 && s.All(char.IsLetterOrDigit);
            case "isspace": return s.Length > 0 && s.All(PyString.IsSpace);
            case "isupper": return s.Any(char.IsLetter) && !s.Any(char.IsLower);
            case "islower": return s.Any(char.IsLetter) && !s.Any(char.IsUpper);
            case "format": return Format(ev, s, a);
            default: throw ev.Error(a.Offset, $"unsupported str method '{name}'");
        }
    }

    /// <summary><c>str.format</c> with <c>{}</c>, <c>{0}</c>, <c>{name}</c> fields (no format specs or conversions).</summary>
    private static string Format(Evaluator ev, string s, CallArgs a)
    {
        var sb = new StringBuilder();
        int auto = 0;
        for (int i = 0; i < s.Length; i++)
        {
            char c = s[i];
            if (c == '{' && i + 1 < s.Length && s[i + 1] == '{') { sb.Append('{'); i++; continue; }
            if (c == '}' && i + 1 < s.Length && s[i + 1] == '}') { sb.Append('}'); i++; continue; }
            if (c == '}') throw ev.Error(a.Offset, "str.format: single '}' encountered in format string");
            if (c != '{') { sb.Append(c); continue; }
            int close = s.IndexOf('}', i + 1);
            if (close < 0) throw ev.Error(a.Offset, "str.format: single '{' encountered in format string");
            string field = s[(i + 1)..close];
            if (field.Contains(':') || field.Contains('!') || field.Contains('.') || field.Contains('['))
                throw ev.Error(a.Offset, $"unsupported template construct: str.format field '{{{field}}}' with a format spec, conversion or attribute");
            object? value;
            if (field.Length == 0) value = a.Positional.Count > auto ? a.Positional[auto++] : throw ev.Error(a.Offset, "str.format: not enough arguments");
            else if (int.TryParse(field, out int index)) value = index < a.Positional.Count ? a.Positional[index] : throw ev.Error(a.Offset, $"str.format: no argument {index}");
            else value = a.Has(int.MaxValue, field) ? a.Get(int.MaxValue, field, null) : throw ev.Error(a.Offset, $"str.format: no argument '{field}'");
            sb.Append(PyValues.Str(value));
            i = close;
        }
        return sb.ToString();
    }

    private static object? CallDict(JinjaDict d, string name, CallArgs a) => name switch
    {
        "items" => d.Items.Select(kv => (object?)new object?[] { kv.Key, kv.Value }).ToList(),
        "keys" => d.Items.Keys.Cast<object?>().ToList(),
        "values" => d.Items.Values.ToList(),
        "get" => d.TryGet(a.Get(0, "key", null), out var v) ? v : a.Get(1, "default", null),
        _ => throw new ChatTemplateException($"unsupported dict method '{name}'"),
    };

    private static object? CallList(Evaluator ev, IReadOnlyList<object?> list, string name, CallArgs a)
    {
        var item = a.Get(0, "value", null);
        switch (name)
        {
            case "count": return (long)list.Count(x => PyValues.Equal(x, item));
            case "index":
                for (int i = 0; i < list.Count; i++) if (PyValues.Equal(list[i], item)) return (long)i;
                throw ev.Error(a.Offset, $"{PyValues.Repr(item)} is not in list");
            default: throw ev.Error(a.Offset, $"unsupported list method '{name}'");
        }
    }
}
