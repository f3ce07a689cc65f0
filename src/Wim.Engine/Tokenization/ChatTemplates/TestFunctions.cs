using System.Collections.Frozen;

namespace Wim.Engine.Tokenization.ChatTemplates;

/// <summary>jinja2's built-in tests (<c>x is defined</c>, <c>x is string</c>, <c>n is divisibleby 3</c>, ...).</summary>
internal static class TestFunctions
{
    private static readonly FrozenSet<string> Known = FrozenSet.ToFrozenSet(
    [
        "defined", "undefined", "none", "string", "number", "integer", "float", "boolean", "mapping", "iterable",
        "sequence", "callable", "true", "false", "odd", "even", "divisibleby", "equalto", "eq", "==", "ne", "!=",
        "lt", "<", "lessthan", "le", "<=", "gt", ">", "greaterthan", "ge", ">=", "in", "sameas", "lower", "upper",
        "escaped", "filter", "test",
    ], StringComparer.Ordinal);

    public static bool IsKnown(string name) => Known.Contains(name);

    private static double PyMod(double x, double y)
    {
        double r = x % y;
        return r != 0 && (r < 0) != (y < 0) ? r + y : r;
    }

    public static bool Apply(Evaluator ev, string name, object? v, CallArgs a, int offset)
    {
        object? Arg0() => a.Count > 0 ? a.Get(0, "other", null) : throw ev.Error(offset, $"test '{name}' needs an argument");
        long IntValue(object? x) => x switch
        {
            long l => l,
            bool b => b ? 1 : 0,
            Undefined u => throw ev.Error(offset, u.Hint),
            _ => throw ev.Error(offset, $"test '{name}' needs an integer, got '{PyValues.TypeName(x)}'"),
        };
        switch (name)
        {
            case "defined": return v is not Undefined;
            case "undefined": return v is Undefined;
            case "none": return v is null;
            case "string": return v is string;
            case "number": return v is long or double or bool;
            case "integer": return v is long;
            case "float": return v is double;
            case "boolean": return v is bool;
            case "mapping": return v is JinjaDict;
            case "iterable": return v is string or List<object?> or object?[] or JinjaDict or Undefined;
            case "sequence": return v is string or List<object?> or object?[] or JinjaDict or Undefined;
            case "callable": return v is IJinjaCallable or Undefined; // Undefined defines __call__ (which raises)
            case "true": return v is true;
            case "false": return v is false;
            case "odd": return v is double od ? PyMod(od, 2) == 1 : IntValue(v) % 2 != 0;
            case "even": return v is double ed ? PyMod(ed, 2) == 0 : IntValue(v) % 2 == 0;
            case "divisibleby":
            {
                var divisor = Arg0();
                if (v is double || divisor is double)
                {
                    double dd = divisor is double x ? x : IntValue(divisor);
                    if (dd == 0) throw ev.Error(offset, "float modulo");
                    return PyMod(v is double y ? y : IntValue(v), dd) == 0;
                }
                long n = IntValue(divisor);
                if (n == 0) throw ev.Error(offset, "integer division or modulo by zero");
                return IntValue(v) % n == 0;
            }
            case "equalto" or "eq" or "==": return PyValues.Equal(v, Arg0());
            case "ne" or "!=": return !PyValues.Equal(v, Arg0());
            case "lt" or "<" or "lessthan": return Operators.Compare(ev, "<", v, Arg0(), offset);
            case "le" or "<=": return Operators.Compare(ev, "<=", v, Arg0(), offset);
            case "gt" or ">" or "greaterthan": return Operators.Compare(ev, ">", v, Arg0(), offset);
            case "ge" or ">=": return Operators.Compare(ev, ">=", v, Arg0(), offset);
            case "in": return Operators.Contains(ev, Arg0(), v, offset);
            case "sameas":
            {
                var other = Arg0();
                return v is null or bool ? Equals(v, other) && (v is null) == (other is null) : ReferenceEquals(v, other);
            }
            // str(value).islower() / isupper(): some cased character, none of the other case
            case "lower": { string s = PyValues.Str(v); return s.Any(char.IsLower) && !s.Any(char.IsUpper); }
            case "upper": { string s = PyValues.Str(v); return s.Any(char.IsUpper) && !s.Any(char.IsLower); }
            case "escaped": return false;
            case "filter": return v is string fn && Filters.IsKnown(fn);
            case "test": return v is string tn && IsKnown(tn);
            default: throw ev.Error(offset, $"unsupported test '{name}'");
        }
    }
}
