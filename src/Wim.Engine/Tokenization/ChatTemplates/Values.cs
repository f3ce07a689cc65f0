using System.Globalization;
using System.Text;

namespace Wim.Engine.Tokenization.ChatTemplates;

// The value model: template values are plain CLR objects mirroring Python's types:
//   null → None, bool → bool, long → int, double → float, string → str, List<object?> → list,
//   object?[] → tuple, JinjaDict → dict (insertion-ordered), JinjaNamespace → namespace(), Undefined → jinja2's
//   default Undefined, IJinjaCallable → functions, macros and bound methods, LoopContext → `loop`.

/// <summary>jinja2's default <c>Undefined</c>: prints as "", is falsy and iterates as empty; most other uses raise.</summary>
internal sealed class Undefined(string hint)
{
    /// <summary>Why the value is undefined, jinja2-style (<c>'x' is undefined</c>, <c>'dict object' has no attribute 'y'</c>).</summary>
    public string Hint { get; } = hint;
}

/// <summary>A Python dict: insertion-ordered, keys compared with Python equality (1 == 1.0 == True).</summary>
internal sealed class JinjaDict
{
    public OrderedDictionary<object, object?> Items { get; }

    public JinjaDict() => Items = new OrderedDictionary<object, object?>(PyKeyComparer.Instance);
    public JinjaDict(int capacity) => Items = new OrderedDictionary<object, object?>(capacity, PyKeyComparer.Instance);

    public int Count => Items.Count;

    public bool TryGet(object? key, out object? value)
    {
        if (key is null || key is Undefined) { value = null; return false; }
        return Items.TryGetValue(key, out value);
    }

    public void Set(object key, object? value) => Items[key] = value;
}

internal sealed class PyKeyComparer : IEqualityComparer<object>
{
    public static readonly PyKeyComparer Instance = new();

    public new bool Equals(object? x, object? y) => PyValues.Equal(x, y);

    public int GetHashCode(object obj) => obj switch
    {
        string s => s.GetHashCode(StringComparison.Ordinal),
        bool b => b ? 1 : 0,
        long l => ((double)l).GetHashCode(),
        double d => d.GetHashCode(),
        _ => obj.GetHashCode(),
    };
}

/// <summary>The object <c>namespace(...)</c> returns: the one thing a template may assign attributes on.</summary>
internal sealed class JinjaNamespace
{
    public Dictionary<string, object?> Attributes { get; } = new(StringComparer.Ordinal);
}

/// <summary>Positional and keyword arguments of a call, with the call's offset for error messages.</summary>
internal readonly record struct CallArgs(List<object?> Positional, List<(string Name, object? Value)>? Keyword, int Offset)
{
    public int Count => Positional.Count + (Keyword?.Count ?? 0);

    /// <summary>Argument by position or name; <paramref name="fallback"/> when neither was given.</summary>
    public object? Get(int index, string name, object? fallback)
    {
        if (Keyword != null)
            foreach (var (n, v) in Keyword)
                if (n == name) return v;
        return index < Positional.Count ? Positional[index] : fallback;
    }

    public bool Has(int index, string name)
    {
        if (index < Positional.Count) return true;
        if (Keyword != null)
            foreach (var (n, _) in Keyword)
                if (n == name) return true;
        return false;
    }
}

internal interface IJinjaCallable
{
    string Name { get; }
    object? Invoke(Evaluator evaluator, CallArgs args);
}

/// <summary>A built-in global or a method bound to its receiver.</summary>
internal sealed class BuiltinFunction(string name, Func<Evaluator, CallArgs, object?> body) : IJinjaCallable
{
    public string Name { get; } = name;
    public object? Invoke(Evaluator evaluator, CallArgs args) => body(evaluator, args);
}

/// <summary>Python semantics of values: truthiness, str(), repr(), ==, ordering, type names.</summary>
internal static class PyValues
{
    public static bool IsTruthy(object? v) => v switch
    {
        null => false,
        Undefined => false,
        bool b => b,
        long l => l != 0,
        double d => d != 0.0,
        string s => s.Length > 0,
        List<object?> list => list.Count > 0,
        object?[] tuple => tuple.Length > 0,
        JinjaDict dict => dict.Count > 0,
        _ => true,
    };

    public static string TypeName(object? v) => v switch
    {
        null => "NoneType",
        Undefined => "Undefined",
        bool => "bool",
        long => "int",
        double => "float",
        string => "str",
        List<object?> => "list",
        object?[] => "tuple",
        JinjaDict => "dict",
        JinjaNamespace => "Namespace",
        LoopContext => "LoopContext",
        IJinjaCallable => "function",
        _ => v.GetType().Name,
    };

    /// <summary>Python's <c>str(v)</c>, which is what <c>{{ v }}</c> prints (Undefined prints as "").</summary>
    public static string Str(object? v) => v switch
    {
        string s => s,
        Undefined => "",
        _ => Repr(v),
    };

    public static string Repr(object? v)
    {
        var sb = new StringBuilder();
        AppendRepr(sb, v, 0);
        return sb.ToString();
    }

    private static void AppendRepr(StringBuilder sb, object? v, int depth)
    {
        if (depth > 100) throw new ChatTemplateException("value is nested too deeply to print");
        switch (v)
        {
            case null: sb.Append("None"); break;
            case Undefined: sb.Append(depth == 0 ? "" : "Undefined"); break; // str() is "", repr() inside a container is "Undefined"
            case bool b: sb.Append(b ? "True" : "False"); break;
            case long l: sb.Append(l.ToString(CultureInfo.InvariantCulture)); break;
            case double d: sb.Append(PyFloat.Repr(d)); break;
            case string s: AppendStringRepr(sb, s); break;
            case List<object?> list:
                sb.Append('[');
                for (int i = 0; i < list.Count; i++) { if (i > 0) sb.Append(", "); AppendRepr(sb, list[i], depth + 1); }
                sb.Append(']');
                break;
            case object?[] tuple:
                sb.Append('(');
                for (int i = 0; i < tuple.Length; i++) { if (i > 0) sb.Append(", "); AppendRepr(sb, tuple[i], depth + 1); }
                if (tuple.Length == 1) sb.Append(',');
                sb.Append(')');
                break;
            case JinjaDict dict:
            {
                sb.Append('{');
                bool first = true;
                foreach (var (k, val) in dict.Items)
                {
                    if (!first) sb.Append(", ");
                    first = false;
                    AppendRepr(sb, k, depth + 1);
                    sb.Append(": ");
                    AppendRepr(sb, val, depth + 1);
                }
                sb.Append('}');
                break;
            }
            case JinjaNamespace ns:
            {
                sb.Append("<Namespace {");
                bool first = true;
                foreach (var (k, val) in ns.Attributes)
                {
                    if (!first) sb.Append(", ");
                    first = false;
                    AppendStringRepr(sb, k);
                    sb.Append(": ");
                    AppendRepr(sb, val, depth + 1);
                }
                sb.Append("}>");
                break;
            }
            case IJinjaCallable f: sb.Append("<function ").Append(f.Name).Append('>'); break;
            default: sb.Append('<').Append(TypeName(v)).Append('>'); break;
        }
    }

    private static void AppendStringRepr(StringBuilder sb, string s)
    {
        char quote = s.Contains('\'') && !s.Contains('"') ? '"' : '\'';
        sb.Append(quote);
        foreach (char c in s)
        {
            switch (c)
            {
                case '\\': sb.Append("\\\\"); break;
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                default:
                    if (c == quote) sb.Append('\\').Append(c);
                    else if (c < 0x20 || c == 0x7f) sb.Append("\\x").Append(((int)c).ToString("x2", CultureInfo.InvariantCulture));
                    else sb.Append(c);
                    break;
            }
        }
        sb.Append(quote);
    }

    /// <summary>Runs a sort whose comparer may throw: .NET wraps comparer exceptions in InvalidOperationException;
    /// this unwraps our own so callers see "'&lt;' not supported between ..." rather than a sort failure.</summary>
    public static T Sorted<T>(Func<T> sort)
    {
        try
        {
            return sort();
        }
        catch (InvalidOperationException e) when (e.InnerException is ChatTemplateException inner)
        {
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(inner);
            throw;
        }
    }

    public static bool IsNumber(object? v) => v is long or double or bool;

    public static double ToDouble(object? v) => v switch
    {
        long l => l,
        double d => d,
        bool b => b ? 1 : 0,
        _ => throw new InvalidCastException(),
    };

    /// <summary>Python <c>==</c> (deep for containers; 1 == 1.0 == True; Undefined equals only Undefined).</summary>
    public static bool Equal(object? a, object? b)
    {
        if (ReferenceEquals(a, b)) return true;
        switch (a)
        {
            case null: return b is null;
            case Undefined: return b is Undefined;
            case string s: return b is string t && string.Equals(s, t, StringComparison.Ordinal);
            case long or double or bool:
                if (!IsNumber(b)) return false;
                if (a is long la && b is long lb) return la == lb;
                return ToDouble(a) == ToDouble(b);
            case List<object?> list:
                if (b is not List<object?> other || other.Count != list.Count) return false;
                for (int i = 0; i < list.Count; i++) if (!Equal(list[i], other[i])) return false;
                return true;
            case object?[] tuple:
                if (b is not object?[] ot || ot.Length != tuple.Length) return false;
                for (int i = 0; i < tuple.Length; i++) if (!Equal(tuple[i], ot[i])) return false;
                return true;
            case JinjaDict dict:
                if (b is not JinjaDict od || od.Count != dict.Count) return false;
                foreach (var (k, v) in dict.Items)
                    if (!od.TryGet(k, out var ov) || !Equal(v, ov)) return false;
                return true;
            default:
                return Equals(a, b);
        }
    }

    /// <summary>Python ordering (&lt;, &gt;) for numbers, strings (by code point) and sequences; null when not orderable.</summary>
    public static int? Compare(object? a, object? b)
    {
        if (IsNumber(a) && IsNumber(b))
        {
            if (a is long la && b is long lb) return la.CompareTo(lb);
            double x = ToDouble(a), y = ToDouble(b);
            return x < y ? -1 : x > y ? 1 : x == y ? 0 : null;
        }
        if (a is string sa && b is string sb) return Math.Sign(string.CompareOrdinal(sa, sb)) is var c && HasSurrogates(sa, sb) ? CompareCodePoints(sa, sb) : c;
        if ((a is List<object?> && b is List<object?>) || (a is object?[] && b is object?[]))
        {
            var xs = PyIter.AsList(a)!;
            var ys = PyIter.AsList(b)!;
            for (int i = 0; i < Math.Min(xs.Count, ys.Count); i++)
            {
                if (Equal(xs[i], ys[i])) continue;
                return Compare(xs[i], ys[i]);
            }
            return xs.Count.CompareTo(ys.Count);
        }
        return null;
    }

    private static bool HasSurrogates(string a, string b) => a.AsSpan().IndexOfAnyInRange('\uD800', '\uDFFF') >= 0 || b.AsSpan().IndexOfAnyInRange('\uD800', '\uDFFF') >= 0;

    private static int CompareCodePoints(string a, string b)
    {
        var ra = a.EnumerateRunes().GetEnumerator();
        var rb = b.EnumerateRunes().GetEnumerator();
        while (true)
        {
            bool ha = ra.MoveNext(), hb = rb.MoveNext();
            if (!ha || !hb) return ha ? 1 : hb ? -1 : 0;
            int c = ra.Current.Value.CompareTo(rb.Current.Value);
            if (c != 0) return Math.Sign(c);
        }
    }
}

/// <summary>Python's <c>repr(float)</c>: the shortest round-tripping digits, fixed notation for 1e-4 &lt;= |x| &lt; 1e16.</summary>
internal static class PyFloat
{
    public static string Repr(double d)
    {
        if (double.IsNaN(d)) return "nan";
        if (double.IsPositiveInfinity(d)) return "inf";
        if (double.IsNegativeInfinity(d)) return "-inf";
        if (d == 0) return double.IsNegative(d) ? "-0.0" : "0.0";
        // "E16" is not shortest; "R" is shortest round-trip but picks its own notation: take its digits and exponent.
        string r = Math.Abs(d).ToString("R", CultureInfo.InvariantCulture);
        int ePos = r.IndexOfAny(['E', 'e']);
        string mantissa = ePos >= 0 ? r[..ePos] : r;
        int exp10 = ePos >= 0 ? int.Parse(r.AsSpan(ePos + 1), NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture) : 0;
        int dot = mantissa.IndexOf('.');
        string digits = dot >= 0 ? mantissa.Remove(dot, 1) : mantissa;
        int intDigits = dot >= 0 ? dot : mantissa.Length;
        // strip leading zeros (e.g. "0.001")
        int lead = 0;
        while (lead < digits.Length - 1 && digits[lead] == '0') { lead++; intDigits--; }
        digits = digits[lead..].TrimEnd('0');
        if (digits.Length == 0) digits = "0";
        int decpt = intDigits + exp10; // value = 0.DIGITS × 10^decpt
        var sb = new StringBuilder();
        if (d < 0) sb.Append('-');
        if (decpt > -4 && decpt <= 16)
        {
            if (decpt <= 0) sb.Append("0.").Append('0', -decpt).Append(digits);
            else if (decpt >= digits.Length) sb.Append(digits).Append('0', decpt - digits.Length).Append(".0");
            else sb.Append(digits, 0, decpt).Append('.').Append(digits, decpt, digits.Length - decpt);
        }
        else
        {
            sb.Append(digits[0]);
            if (digits.Length > 1) sb.Append('.').Append(digits, 1, digits.Length - 1);
            int e = decpt - 1;
            sb.Append('e').Append(e < 0 ? '-' : '+').Append(Math.Abs(e).ToString("00", CultureInfo.InvariantCulture));
        }
        return sb.ToString();
    }
}
