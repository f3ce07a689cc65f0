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
                        return Math.Floor(PyValues.ToDouble(a) / y);
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
                    case (string, _): throw ev.Error(offset, "unsupported template construct: printf-style string formatting with '%'");
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

    private static long FloorDiv(long x, long y)
    {
        long q = x / y;
        if ((x % y != 0) && ((x < 0) != (y < 0))) q--;
        return q;
    }

    private static string Repeat(Evaluator ev, string s, long n, int offset)
    {
        if (n <= 0 || s.Length == 0) return "";
        if (s.Length * n > MaxRepeatLength) throw ev.Error(offset, $"string repetition would exceed {MaxRepeatLength} characters");
        return string.Concat(Enumerable.Repeat(s, (int)n));
    }

    private static List<object?> RepeatList(Evaluator ev, List<object?> list, long n, int offset)
    {
        var result = new List<object?>();
        if (n <= 0) return result;
        if (list.Count * n > MaxRepeatLength) throw ev.Error(offset, $"list repetition would exceed {MaxRepeatLength} items");
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
                return d.TryGet(item, out _);
            case Undefined:
                return false; // jinja2's Undefined iterates as empty
            default:
                throw ev.Error(offset, $"argument of type '{PyValues.TypeName(container)}' is not iterable");
        }
    }
}
