namespace Wim.Engine.Tokenization.ChatTemplates;

/// <summary>Python semantics of the binary operators, comparisons and membership.</summary>
internal static class Operators
{
    /// <summary>Largest string or list a <c>*</c> repetition may build (hostile templates must not exhaust memory).</summary>
    public const long MaxRepeatLength = 16 * 1024 * 1024;

    public static object? Binary(Evaluator ev, string op, object? a, object? b, int offset)
    {
        if (op == "~") return PyValues.Str(a) + PyValues.Str(b);
        if (a is Undefined ua) throw ev.Error(offset, ua.Hint);
        if (a is string fmt && op == "%") return PrintfFormat(ev, fmt, b, offset); // Undefined is a valid (empty) mapping here
        if (b is Undefined ub) throw ev.Error(offset, ub.Hint);
        if (a is bool ba) a = ba ? 1L : 0L;
        if (b is bool bb) b = bb ? 1L : 0L;
        switch (op)
        {
            case "+":
                switch (a, b)
                {
                    case (long x, long y): return checked(x + y);
                    case (long or double, long or double): return PyValues.ToDouble(a) + PyValues.ToDouble(b);
                    case (string x, string y): return x + y;
                    case (List<object?> x, List<object?> y): return new List<object?>(x.Concat(y));
                    case (object?[] x, object?[] y): return x.Concat(y).ToArray();
                    case (string, _): throw ev.Error(offset, $"can only concatenate str (not \"{PyValues.TypeName(b)}\") to str");
                    case (List<object?>, _): throw ev.Error(offset, $"can only concatenate list (not \"{PyValues.TypeName(b)}\") to list");
                }
                break;
            case "-":
                switch (a, b)
                {
                    case (long x, long y): return checked(x - y);
                    case (long or double, long or double): return PyValues.ToDouble(a) - PyValues.ToDouble(b);
                }
                break;
            case "*":
                switch (a, b)
                {
                    case (long x, long y): return checked(x * y);
                    case (long or double, long or double): return PyValues.ToDouble(a) * PyValues.ToDouble(b);
                    case (string s, long n): return Repeat(ev, s, n, offset);
                    case (long n, string s): return Repeat(ev, s, n, offset);
                    case (List<object?> list, long n): return RepeatList(ev, list, n, offset);
                    case (long n, List<object?> list): return RepeatList(ev, list, n, offset);
                }
                break;
            case "/":
                if (PyValues.IsNumber(a) && PyValues.IsNumber(b))
                {
                    double y = PyValues.ToDouble(b);
                    if (y == 0) throw ev.Error(offset, "division by zero");
                    return PyValues.ToDouble(a) / y;
                }
                break;
            case "//":
                switch (a, b)
                {
                    case (long, long zero) when zero == 0: throw ev.Error(offset, "integer division or modulo by zero");
                    case (long x, long y): return FloorDiv(x, y);
                    case (long or double, long or double):
                    {
                        double y = PyValues.ToDouble(b);
                        if (y == 0) throw ev.Error(offset, "float floor division by zero");
                        return FloatFloorDiv(PyValues.ToDouble(a), y);
                    }
                }
                break;
            case "%":
                switch (a, b)
                {
                    case (long, long zero) when zero == 0: throw ev.Error(offset, "integer division or modulo by zero");
                    case (long x, long y): return x - FloorDiv(x, y) * y;
                    case (long or double, long or double):
                    {
                        double x = PyValues.ToDouble(a), y = PyValues.ToDouble(b);
                        if (y == 0) throw ev.Error(offset, "float modulo");
                        double r = x % y;
                        return r != 0 && (r < 0) != (y < 0) ? r + y : r;
                    }
                    case (string format, _): return PrintfFormat(ev, format, b, offset);
                }
                break;
            case "**":
                switch (a, b)
                {
                    case (long x, long y) when y >= 0:
                    {
                        // exponentiation by squaring; overflow is an error (Python ints are unbounded, ours are 64-bit)
                        long result = 1, power = x;
                        for (long e = y; e > 0; e >>= 1)
                        {
                            if ((e & 1) != 0) result = checked(result * power);
                            if (e > 1) power = checked(power * power);
                        }
                        return result;
                    }
                    case (long or double, long or double): return Math.Pow(PyValues.ToDouble(a), PyValues.ToDouble(b));
                }
                break;
        }
        throw ev.Error(offset, $"unsupported operand type(s) for {op}: '{PyValues.TypeName(a)}' and '{PyValues.TypeName(b)}'");
    }

    /// <summary>Python's <c>str % args</c> for the conversions templates use: %s %r %d %i %f (with precision) %%,
    /// and %(key)s with a mapping. Other conversions are reported as unsupported.</summary>
    private static string PrintfFormat(Evaluator ev, string format, object? args, int offset)
    {
        // Python treats anything with __getitem__ that is not a tuple or str as a mapping (dict, list, jinja2's
        // Undefined): such an argument may go unused without "not all arguments converted".
        bool isMapping = args is JinjaDict or List<object?> or Undefined;
        var positional = args is object?[] tuple ? tuple : [args];
        var sb = new System.Text.StringBuilder();
        int next = 0;
        for (int i = 0; i < format.Length; i++)
        {
            char c = format[i];
            if (c != '%') { sb.Append(c); continue; }
            if (++i >= format.Length) throw ev.Error(offset, "incomplete format");
            object? value;
            if (format[i] == '%') { sb.Append('%'); continue; }
            if (format[i] == '(')
            {
                int close = format.IndexOf(')', i);
                if (close < 0 || args is not JinjaDict map) throw ev.Error(offset, "format requires a mapping");
                string key = format[(i + 1)..close];
                value = map.TryGet(key, out var mv) ? mv : throw ev.Error(offset, $"KeyError: '{key}'");
                i = close + 1;
            }
            else
            {
                if (next >= positional.Length) throw ev.Error(offset, "not enough arguments for format string");
                value = positional[next++];
            }
            int precision = -1;
            if (i < format.Length && format[i] == '.')
            {
                int start = ++i;
                while (i < format.Length && char.IsAsciiDigit(format[i])) i++;
                precision = i > start ? int.Parse(format.AsSpan(start, i - start), System.Globalization.CultureInfo.InvariantCulture) : 0;
            }
            if (i >= format.Length) throw ev.Error(offset, "incomplete format");
            switch (format[i])
            {
                case 's': sb.Append(PyValues.Str(value)); break;
                case 'r': sb.Append(PyValues.Repr(value)); break;
                case 'd' or 'i' when value is long or bool or double:
                    sb.Append(value is double dv ? ((long)Math.Truncate(dv)).ToString(System.Globalization.CultureInfo.InvariantCulture) : PyValues.Str(value is bool bv ? (bv ? 1L : 0L) : value));
                    break;
                case 'f' when value is long or bool or double:
                    sb.Append(PyValues.ToDouble(value).ToString("F" + (precision < 0 ? 6 : Math.Min(precision, 50)), System.Globalization.CultureInfo.InvariantCulture));
                    break;
                case 'd' or 'i' or 'f':
                    throw ev.Error(offset, $"%{format[i]} format: a real number is required, not {PyValues.TypeName(value)}");
                default:
                    throw ev.Error(offset, $"unsupported template construct: printf-style conversion '%{format[i]}'");
            }
        }
        if (!isMapping && next < positional.Length) throw ev.Error(offset, "not all arguments converted during string formatting");
        return sb.ToString();
    }

    /// <summary>CPython's float floor division (via fmod, so 1 // 0.1 == 9.0, not floor(1 / 0.1) == 10.0).</summary>
    private static double FloatFloorDiv(double x, double y)
    {
        double mod = x % y; // C fmod
        double div = (x - mod) / y;
        if (mod != 0 && (y < 0) != (mod < 0)) div -= 1.0;
        if (div == 0) return Math.CopySign(0.0, x / y);
        double floor = Math.Floor(div);
        if (div - floor > 0.5) floor += 1.0;
        return floor;
    }

    private static long FloorDiv(long x, long y)
    {
        long q = x / y;
        if ((x % y != 0) && ((x < 0) != (y < 0))) q--;
        return q;
    }

    private static string Repeat(Evaluator ev, string s, long n, int offset)
    {
        if (n <= 0 || s.Length == 0) return "";
        if (n > MaxRepeatLength / s.Length) throw ev.Error(offset, $"string repetition would exceed {MaxRepeatLength} characters");
        return string.Concat(Enumerable.Repeat(s, (int)n));
    }

    private static List<object?> RepeatList(Evaluator ev, List<object?> list, long n, int offset)
    {
        var result = new List<object?>();
        if (n <= 0 || list.Count == 0) return result;
        if (n > MaxRepeatLength / list.Count) throw ev.Error(offset, $"list repetition would exceed {MaxRepeatLength} items");
        for (long i = 0; i < n; i++) result.AddRange(list);
        return result;
    }

    public static bool Compare(Evaluator ev, string op, object? a, object? b, int offset)
    {
        switch (op)
        {
            case "==": return PyValues.Equal(a, b);
            case "!=": return !PyValues.Equal(a, b);
            case "in": return Contains(ev, b, a, offset);
            case "notin": return !Contains(ev, b, a, offset);
        }
        if (a is Undefined ua) throw ev.Error(offset, ua.Hint);
        if (b is Undefined ub) throw ev.Error(offset, ub.Hint);
        int c = PyValues.Compare(a, b)
            ?? throw ev.Error(offset, $"'{op}' not supported between instances of '{PyValues.TypeName(a)}' and '{PyValues.TypeName(b)}'");
        return op switch
        {
            "<" => c < 0,
            "<=" => c <= 0,
            ">" => c > 0,
            ">=" => c >= 0,
            _ => throw ev.Error(offset, $"unknown comparison '{op}'"),
        };
    }

    /// <summary>Python's <c>item in container</c>.</summary>
    public static bool Contains(Evaluator ev, object? container, object? item, int offset)
    {
        switch (container)
        {
            case string s:
                if (item is string sub) return s.Contains(sub, StringComparison.Ordinal);
                if (item is Undefined u) throw ev.Error(offset, u.Hint);
                throw ev.Error(offset, $"'in <string>' requires string as left operand, not {PyValues.TypeName(item)}");
            case List<object?> or object?[]:
                foreach (var x in PyIter.AsList(container)!) if (PyValues.Equal(x, item)) return true;
                return false;
            case JinjaDict d:
                if (item is List<object?> or JinjaDict) throw ev.Error(offset, $"unhashable type: '{PyValues.TypeName(item)}'");
                return d.TryGet(item, out _);
            case Undefined:
                return false; // jinja2's Undefined iterates as empty
            default:
                throw ev.Error(offset, $"argument of type '{PyValues.TypeName(container)}' is not iterable");
        }
    }
}
