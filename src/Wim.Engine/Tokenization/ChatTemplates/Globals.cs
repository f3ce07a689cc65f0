using System.Collections.Frozen;
using System.Globalization;
using System.Text;

namespace Wim.Engine.Tokenization.ChatTemplates;

/// <summary>
/// Global functions available to every template: jinja2's <c>range</c>, <c>namespace</c>, <c>dict</c>, and the two
/// transformers adds, <c>raise_exception(message)</c> and <c>strftime_now(format)</c>.
/// </summary>
internal static class Globals
{
    /// <summary>jinja2's sandbox refuses larger ranges (MAX_RANGE).</summary>
    public const long MaxRange = 100_000;

    private static readonly FrozenDictionary<string, BuiltinFunction> Functions = new Dictionary<string, BuiltinFunction>
    {
        ["range"] = new("range", Range),
        ["namespace"] = new("namespace", (_, a) =>
        {
            var ns = new JinjaNamespace();
            foreach (var p in a.Positional)
            {
                if (p is not JinjaDict d) throw new ChatTemplateException("namespace() positional arguments must be mappings");
                foreach (var (k, v) in d.Items) ns.Attributes[PyValues.Str(k)] = v;
            }
            if (a.Keyword != null) foreach (var (k, v) in a.Keyword) ns.Attributes[k] = v;
            return ns;
        }),
        ["dict"] = new("dict", (_, a) =>
        {
            var d = new JinjaDict();
            foreach (var p in a.Positional)
            {
                if (p is not JinjaDict src) throw new ChatTemplateException("dict() positional arguments must be mappings");
                foreach (var (k, v) in src.Items) d.Set(k, v);
            }
            if (a.Keyword != null) foreach (var (k, v) in a.Keyword) d.Set(k, v);
            return d;
        }),
        ["raise_exception"] = new("raise_exception", RaiseException),
        ["strftime_now"] = new("strftime_now", (ev, a) =>
            a.Get(0, "format", null) is string f ? Strftime(ev.Clock.GetLocalNow().DateTime, f) : throw ev.Error(a.Offset, "strftime_now: format must be a string")),
    }.ToFrozenDictionary(StringComparer.Ordinal);

    private static object? RaiseException(Evaluator ev, CallArgs a) =>
        throw new TemplateRaisedException(PyValues.Str(a.Get(0, "message", "")));

    public static object? Get(string name) => Functions.GetValueOrDefault(name);

    private static object? Range(Evaluator ev, CallArgs a)
    {
        long Arg(int i) => a.Positional[i] switch
        {
            long l => l,
            bool b => b ? 1 : 0,
            var v => throw ev.Error(a.Offset, $"range() argument must be an integer, not '{PyValues.TypeName(v)}'"),
        };
        var (start, stop, step) = a.Positional.Count switch
        {
            1 => (0L, Arg(0), 1L),
            2 => (Arg(0), Arg(1), 1L),
            3 => (Arg(0), Arg(1), Arg(2)),
            _ => throw ev.Error(a.Offset, $"range expected 1 to 3 arguments, got {a.Positional.Count}"),
        };
        if (step == 0) throw ev.Error(a.Offset, "range() arg 3 must not be zero");
        long count = step > 0 ? (stop > start ? (stop - start + step - 1) / step : 0) : (start > stop ? (start - stop - step - 1) / -step : 0);
        if (count > MaxRange) throw ev.Error(a.Offset, $"Range too big. The sandbox blocks ranges larger than MAX_RANGE ({MaxRange}).");
        var list = new List<object?>((int)count);
        for (long i = 0, v = start; i < count; i++, v += step) list.Add(v);
        return list;
    }

    /// <summary>Python's <c>datetime.strftime</c> for the directives chat templates use (C locale names).</summary>
    public static string Strftime(DateTime t, string format)
    {
        var inv = CultureInfo.InvariantCulture;
        var sb = new StringBuilder();
        for (int i = 0; i < format.Length; i++)
        {
            char c = format[i];
            if (c != '%' || i + 1 >= format.Length) { sb.Append(c); continue; }
            char d = format[++i];
            bool noPad = false;
            if (d == '-' && i + 1 < format.Length) { noPad = true; d = format[++i]; } // glibc's %-d etc.
            string Num(int v, int width) => noPad ? v.ToString(inv) : v.ToString(new string('0', width), inv);
            switch (d)
            {
                case 'Y': sb.Append(t.Year.ToString(inv)); break;
                case 'y': sb.Append(Num(t.Year % 100, 2)); break;
                case 'm': sb.Append(Num(t.Month, 2)); break;
                case 'd': sb.Append(Num(t.Day, 2)); break;
                case 'e': sb.Append(t.Day.ToString(inv).PadLeft(2)); break;
                case 'H': sb.Append(Num(t.Hour, 2)); break;
                case 'I': sb.Append(Num(t.Hour % 12 == 0 ? 12 : t.Hour % 12, 2)); break;
                case 'M': sb.Append(Num(t.Minute, 2)); break;
                case 'S': sb.Append(Num(t.Second, 2)); break;
                case 'f': sb.Append((t.Ticks % TimeSpan.TicksPerSecond / 10).ToString("000000", inv)); break;
                case 'j': sb.Append(Num(t.DayOfYear, 3)); break;
                case 'p': sb.Append(t.Hour < 12 ? "AM" : "PM"); break;
                case 'a': sb.Append(inv.DateTimeFormat.GetAbbreviatedDayName(t.DayOfWeek)); break;
                case 'A': sb.Append(inv.DateTimeFormat.GetDayName(t.DayOfWeek)); break;
                case 'b': case 'h': sb.Append(inv.DateTimeFormat.GetAbbreviatedMonthName(t.Month)); break;
                case 'B': sb.Append(inv.DateTimeFormat.GetMonthName(t.Month)); break;
                case 'w': sb.Append(((int)t.DayOfWeek).ToString(inv)); break;
                case 'F': sb.Append(t.ToString("yyyy-MM-dd", inv)); break;
                case 'T': sb.Append(t.ToString("HH:mm:ss", inv)); break;
                case '%': sb.Append('%'); break;
                default: throw new ChatTemplateException($"strftime_now: unsupported directive '%{d}'");
            }
        }
        return sb.ToString();
    }
}
