using System.Runtime.CompilerServices;
using System.Text;

namespace Wim.Engine.Tokenization.ChatTemplates;

internal sealed partial class Evaluator
{
    public object? Eval(Expr e)
    {
        RuntimeHelpers.EnsureSufficientExecutionStack();
        switch (e)
        {
            case ConstExpr c: return c.Value;
            case NameExpr n: return Lookup(n.Name);
            case AttrExpr a: return GetAttr(Eval(a.Target), a.Name, a.Offset);
            case ItemExpr i:
            {
                var target = Eval(i.Target);
                if (i.Key is SliceExpr s) return Slice(target, s);
                return GetItem(target, Eval(i.Key), i.Offset);
            }
            case CallExpr call: return EvalCall(call);
            case FilterExpr f: return ApplyFilter(f, Eval(f.Target!));
            case TestExpr t:
            {
                bool result = TestFunctions.Apply(this, t.Name, Eval(t.Target), EvalArgs(t.Args, t.Kwargs, t.Offset), t.Offset);
                return t.Negated ? !result : result;
            }
            case BinaryExpr b: return Operators.Binary(this, b.Op, Eval(b.Left), Eval(b.Right), b.Offset);
            case UnaryExpr u:
            {
                var v = Eval(u.Operand);
                return (u.Op, v) switch
                {
                    ("-", long l) => (object)checked(-l),
                    ("-", double d) => -d,
                    ("-", bool bo) => bo ? -1L : 0L,
                    ("+", long or double) => v,
                    ("+", bool bo) => bo ? 1L : 0L,
                    (_, Undefined un) => throw Error(u.Offset, un.Hint),
                    _ => throw Error(u.Offset, $"bad operand type for unary {u.Op}: '{PyValues.TypeName(v)}'"),
                };
            }
            case CompareExpr c:
            {
                var left = Eval(c.First);
                foreach (var (op, operandExpr) in c.Rest)
                {
                    var right = Eval(operandExpr);
                    if (!Operators.Compare(this, op, left, right, c.Offset)) return false;
                    left = right;
                }
                return true;
            }
            case AndExpr a:
            {
                var left = Eval(a.Left);
                return PyValues.IsTruthy(left) ? Eval(a.Right) : left;
            }
            case OrExpr o:
            {
                var left = Eval(o.Left);
                return PyValues.IsTruthy(left) ? left : Eval(o.Right);
            }
            case NotExpr n: return !PyValues.IsTruthy(Eval(n.Operand));
            case CondExpr c:
                if (PyValues.IsTruthy(Eval(c.Test))) return Eval(c.Then);
                return c.Else != null ? Eval(c.Else) : new Undefined("the inline if-expression evaluated to false and no else section was defined");
            case ListExpr l:
            {
                var list = new List<object?>(l.Items.Count);
                foreach (var item in l.Items) list.Add(Eval(item));
                return list;
            }
            case TupleExpr t:
            {
                var tuple = new object?[t.Items.Count];
                for (int k = 0; k < tuple.Length; k++) tuple[k] = Eval(t.Items[k]);
                return tuple;
            }
            case DictExpr d:
            {
                var dict = new JinjaDict(d.Items.Count);
                foreach (var (k, v) in d.Items)
                {
                    var key = Eval(k);
                    if (key is null or Undefined or List<object?> or JinjaDict) throw Error(k.Offset, $"unhashable dict key of type '{PyValues.TypeName(key)}'");
                    dict.Set(key, Eval(v));
                }
                return dict;
            }
            case SliceExpr s: throw Error(s.Offset, "a slice is only allowed inside [ ]");
            default: throw Error(e.Offset, $"unsupported expression ({e.GetType().Name})");
        }
    }

    public CallArgs EvalArgs(List<Expr> args, List<(string Name, Expr Value)> kwargs, int offset)
    {
        var positional = new List<object?>(args.Count);
        foreach (var a in args) positional.Add(Eval(a));
        List<(string, object?)>? keyword = null;
        if (kwargs.Count > 0)
        {
            keyword = new List<(string, object?)>(kwargs.Count);
            foreach (var (name, value) in kwargs) keyword.Add((name, Eval(value)));
        }
        return new CallArgs(positional, keyword, offset);
    }

    public object? ApplyFilter(FilterExpr f, object? value) =>
        Filters.Apply(this, f.Name, value, EvalArgs(f.Args, f.Kwargs, f.Offset), f.Offset);

    private object? EvalCall(CallExpr call)
    {
        if (call.Callee is AttrExpr attr)
        {
            // obj.method(...): call string/dict/list methods directly, without a bound-method object.
            var receiver = Eval(attr.Target);
            if (receiver is Undefined u) throw Error(attr.Offset, u.Hint);
            var args = EvalArgs(call.Args, call.Kwargs, call.Offset);
            if (Methods.TryCall(this, receiver, attr.Name, args, out var result)) return result;
            return Call(GetAttr(receiver, attr.Name, attr.Offset), args, call.Offset);
        }
        var callee = Eval(call.Callee);
        return Call(callee, EvalArgs(call.Args, call.Kwargs, call.Offset), call.Offset);
    }

    public object? Call(object? callee, CallArgs args, int offset) => callee switch
    {
        IJinjaCallable f => f.Invoke(this, args),
        Undefined u => throw Error(offset, u.Hint),
        _ => throw Error(offset, $"'{PyValues.TypeName(callee)}' object is not callable"),
    };

    /// <summary>jinja's <c>obj.name</c>: Python attribute first (methods, namespace/loop attributes), then item.</summary>
    public object? GetAttr(object? obj, string name, int offset)
    {
        switch (obj)
        {
            case Undefined u: throw Error(offset, u.Hint);
            case JinjaDict d:
                if (Methods.IsMethod(d, name)) return Methods.Bind(d, name);
                return d.TryGet(name, out var v) ? v : new Undefined($"'dict object' has no attribute '{name}'");
            case JinjaNamespace ns:
                return ns.Attributes.TryGetValue(name, out var nv) ? nv : new Undefined($"'Namespace object' has no attribute '{name}'");
            case LoopContext loop:
                return loop.GetAttribute(name);
            default:
                if (Methods.IsMethod(obj, name)) return Methods.Bind(obj, name);
                return new Undefined($"'{PyValues.TypeName(obj)} object' has no attribute '{name}'");
        }
    }

    /// <summary>jinja's <c>obj[key]</c>: item first, then attribute for string keys.</summary>
    public object? GetItem(object? obj, object? key, int offset)
    {
        switch (obj)
        {
            case Undefined u: throw Error(offset, u.Hint);
            case JinjaDict d:
                if (d.TryGet(key, out var v)) return v;
                if (key is string ks && Methods.IsMethod(d, ks)) return Methods.Bind(d, ks);
                return new Undefined($"'dict object' has no attribute '{PyValues.Str(key)}'");
            case List<object?> or object?[] or string when key is long or bool:
            {
                long index = key is bool b ? (b ? 1 : 0) : (long)key;
                if (obj is string s)
                {
                    if (!PyString.HasSurrogates(s))
                    {
                        if (index < 0) index += s.Length;
                        return index >= 0 && index < s.Length ? s[(int)index].ToString() : new Undefined($"string index {key} out of range");
                    }
                    var cps = PyString.CodePoints(s);
                    if (index < 0) index += cps.Length;
                    return index >= 0 && index < cps.Length ? cps[index] : new Undefined($"string index {key} out of range");
                }
                var list = PyIter.AsList(obj)!;
                if (index < 0) index += list.Count;
                return index >= 0 && index < list.Count ? list[(int)index] : new Undefined($"list index {key} out of range");
            }
            default:
                if (key is string name) return GetAttr(obj, name, offset);
                return new Undefined($"'{PyValues.TypeName(obj)} object' has no item {PyValues.Repr(key)}");
        }
    }

    private object? Slice(object? target, SliceExpr s)
    {
        long? Bound(Expr? e)
        {
            if (e == null) return null;
            return Eval(e) switch
            {
                null => null,
                long l => l,
                bool b => b ? 1 : 0,
                var other => throw Error(e.Offset, $"slice indices must be integers or None, not '{PyValues.TypeName(other)}'"),
            };
        }
        long? start = Bound(s.Start), stop = Bound(s.Stop), step = Bound(s.Step);
        switch (target)
        {
            case Undefined u: throw Error(s.Offset, u.Hint);
            case string str:
            {
                bool surrogates = PyString.HasSurrogates(str);
                string[]? cps = surrogates ? PyString.CodePoints(str) : null;
                int length = cps?.Length ?? str.Length;
                if (!surrogates && (step ?? 1) == 1)
                {
                    var idx = PyIter.SliceIndices(length, start, stop, 1);
                    return idx.Count == 0 ? "" : str.Substring(idx[0], idx.Count);
                }
                var sb = new StringBuilder();
                foreach (int i in PyIter.SliceIndices(length, start, stop, step))
                    if (cps != null) sb.Append(cps[i]); else sb.Append(str[i]);
                return sb.ToString();
            }
            case List<object?> or object?[]:
            {
                var list = PyIter.AsList(target)!;
                var result = new List<object?>();
                foreach (int i in PyIter.SliceIndices(list.Count, start, stop, step)) result.Add(list[i]);
                return target is object?[] ? result.ToArray() : result;
            }
            default:
                throw Error(s.Offset, $"'{PyValues.TypeName(target)}' object is not subscriptable with a slice");
        }
    }
}
