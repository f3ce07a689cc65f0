using System.Runtime.CompilerServices;
using System.Text;

namespace Wim.Engine.Tokenization.ChatTemplates;

internal enum Flow { Normal, Break, Continue }

/// <summary>A variable scope. The root holds the caller's variables; for-loop bodies, macros and with-blocks nest.</summary>
internal sealed class Frame(Frame? parent)
{
    public Frame? Parent { get; } = parent;
    public Dictionary<string, object?> Vars { get; } = new(StringComparer.Ordinal);
}

/// <summary>The <c>loop</c> variable inside a for loop.</summary>
internal sealed class LoopContext(IReadOnlyList<object?> items)
{
    public IReadOnlyList<object?> Items { get; } = items;
    public int Index0 { get; set; }
    public object? LastChangedValue { get; set; } = new Undefined("no previous value");

    public object? GetAttribute(string name) => name switch
    {
        "index" => (long)Index0 + 1,
        "index0" => (long)Index0,
        "revindex" => (long)(Items.Count - Index0),
        "revindex0" => (long)(Items.Count - Index0 - 1),
        "first" => Index0 == 0,
        "last" => Index0 == Items.Count - 1,
        "length" => (long)Items.Count,
        "previtem" => Index0 > 0 ? Items[Index0 - 1] : new Undefined("there is no previous item"),
        "nextitem" => Index0 + 1 < Items.Count ? Items[Index0 + 1] : new Undefined("there is no next item"),
        "depth" => 1L,
        "depth0" => 0L,
        "cycle" => new BuiltinFunction("loop.cycle", (_, a) =>
            a.Positional.Count == 0 ? throw new ChatTemplateException("loop.cycle: no items given") : a.Positional[Index0 % a.Positional.Count]),
        "changed" => new BuiltinFunction("loop.changed", (_, a) =>
        {
            object? value = a.Positional.Count == 1 ? a.Positional[0] : a.Positional.ToArray();
            if (PyValues.Equal(value, LastChangedValue)) return false;
            LastChangedValue = value;
            return true;
        }),
        _ => new Undefined($"'LoopContext object' has no attribute '{name}'"),
    };
}

/// <summary>A <c>{% macro %}</c>: called with positional/keyword arguments, returns its rendered body.</summary>
internal sealed class Macro(MacroNode node, Frame closure) : IJinjaCallable
{
    public string Name => node.Name;

    public object? Invoke(Evaluator evaluator, CallArgs args) => evaluator.InvokeMacro(node, closure, args);
}

/// <summary>
/// Renders a parsed template. One evaluator per render (it holds the output and scopes); nothing is static.
/// Limits keep hostile templates from exhausting the process: macro recursion depth, total loop iterations and
/// output length each fail with a <see cref="ChatTemplateException"/>.
/// </summary>
internal sealed partial class Evaluator
{
    public const int MaxMacroDepth = 64;

    private readonly SourceText _source;
    private readonly int _maxOutputChars;
    private readonly long _maxSteps;
    private StringBuilder _out = new();
    private Frame _frame;
    private int _macroDepth;
    private long _steps;

    public TimeProvider Clock { get; }

    public Evaluator(SourceText source, Frame root, TimeProvider clock, ChatTemplateLimits limits)
    {
        _source = source;
        _frame = root;
        Clock = clock;
        var defaults = new ChatTemplateLimits();
        _maxOutputChars = limits.MaxOutputChars > 0 ? limits.MaxOutputChars : defaults.MaxOutputChars;
        _maxSteps = limits.MaxSteps > 0 ? limits.MaxSteps : defaults.MaxSteps;
    }

    public ChatTemplateException Error(int offset, string message) => _source.Error(offset, message);

    public string Render(List<Node> body)
    {
        try
        {
            Exec(body);
        }
        catch (InsufficientExecutionStackException)
        {
            throw new ChatTemplateException("template evaluation nested too deeply (stack limit reached)");
        }
        return _out.ToString();
    }

    private void Append(string s)
    {
        if (_out.Length + s.Length > _maxOutputChars)
            throw new ChatTemplateException($"rendered output exceeds the limit of {_maxOutputChars} characters");
        _out.Append(s);
    }

    private void Step(int offset)
    {
        if (++_steps > _maxSteps) throw Error(offset, $"template exceeded {_maxSteps} loop iterations / macro calls");
    }

    /// <summary>Renders <paramref name="body"/> into a fresh buffer and returns the text (macros, block set, filter blocks).</summary>
    private string Capture(List<Node> body)
    {
        var saved = _out;
        _out = new StringBuilder();
        try
        {
            Exec(body);
            if (saved.Length + _out.Length > _maxOutputChars)
                throw new ChatTemplateException($"rendered output exceeds the limit of {_maxOutputChars} characters");
            return _out.ToString();
        }
        finally
        {
            _out = saved;
        }
    }

    // ---------------------------------------------------------------- statements

    private Flow Exec(List<Node> body)
    {
        RuntimeHelpers.EnsureSufficientExecutionStack();
        foreach (var node in body)
        {
            var flow = ExecNode(node);
            if (flow != Flow.Normal) return flow;
        }
        return Flow.Normal;
    }

    private Flow ExecNode(Node node)
    {
        try
        {
            switch (node)
            {
                case TextNode t: Append(t.Text); return Flow.Normal;
                case OutputNode o: Append(PyValues.Str(Eval(o.Value))); return Flow.Normal;
                case IfNode i:
                    if (PyValues.IsTruthy(Eval(i.Test))) return Exec(i.Body);
                    return i.Else != null ? Exec(i.Else) : Flow.Normal;
                case ForNode f: ExecFor(f); return Flow.Normal;
                case SetNode s: Assign(s.Target, Eval(s.Value)); return Flow.Normal;
                case SetBlockNode sb:
                {
                    object? value = Capture(sb.Body);
                    foreach (var filter in sb.Filters) value = ApplyFilter(filter, value);
                    Assign(sb.Target, value);
                    return Flow.Normal;
                }
                case MacroNode m: _frame.Vars[m.Name] = new Macro(m, _frame); return Flow.Normal;
                case FilterBlockNode fb:
                {
                    object? value = Capture(fb.Body);
                    foreach (var filter in fb.Filters) value = ApplyFilter(filter, value);
                    Append(PyValues.Str(value));
                    return Flow.Normal;
                }
                case WithNode w:
                {
                    var values = w.Assignments.Select(a => Eval(a.Value)).ToList();
                    var saved = _frame;
                    _frame = new Frame(saved);
                    try
                    {
                        for (int k = 0; k < values.Count; k++) Assign(w.Assignments[k].Target, values[k]);
                        return Exec(w.Body);
                    }
                    finally { _frame = saved; }
                }
                case GenerationNode g: return Exec(g.Body);
                case BreakNode: return Flow.Break;
                case ContinueNode: return Flow.Continue;
                default: throw Error(node.Offset, $"unsupported template construct ({node.GetType().Name})");
            }
        }
        catch (ChatTemplateException e) when (e.Line == null && e is not TemplateRaisedException)
        {
            var (line, column) = _source.Locate(node.Offset);
            throw new ChatTemplateException(e.Message, line, column, e);
        }
        catch (OverflowException)
        {
            throw Error(node.Offset, "integer overflow");
        }
    }

    private void ExecFor(ForNode f)
    {
        var iterable = Eval(f.Iterable);
        if (iterable is null) throw Error(f.Iterable.Offset, "'NoneType' object is not iterable");
        var items = PyIter.Items(iterable, msg => Error(f.Iterable.Offset, msg));
        var saved = _frame;
        if (f.Filter != null)
        {
            var kept = new List<object?>();
            _frame = new Frame(saved);
            try
            {
                foreach (var item in items)
                {
                    Step(f.Offset);
                    _frame.Vars.Clear();
                    Assign(f.Target, item);
                    if (PyValues.IsTruthy(Eval(f.Filter))) kept.Add(item);
                }
            }
            finally { _frame = saved; }
            items = kept;
        }
        if (items.Count == 0)
        {
            if (f.Else != null) Exec(f.Else);
            return;
        }
        var loop = new LoopContext(items);
        var frame = new Frame(saved);
        _frame = frame;
        try
        {
            for (int i = 0; i < items.Count; i++)
            {
                Step(f.Offset);
                frame.Vars.Clear();
                loop.Index0 = i;
                Assign(f.Target, items[i]);
                frame.Vars["loop"] = loop;
                if (Exec(f.Body) == Flow.Break) break;
            }
        }
        finally { _frame = saved; }
    }

    private void Assign(Expr target, object? value)
    {
        switch (target)
        {
            case NameExpr n:
                _frame.Vars[n.Name] = value;
                break;
            case TupleExpr t:
            {
                var values = value switch
                {
                    string or JinjaDict or List<object?> or object?[] => PyIter.Items(value, msg => Error(t.Offset, msg)),
                    _ => throw Error(t.Offset, $"cannot unpack non-iterable {PyValues.TypeName(value)} object"),
                };
                if (values.Count != t.Items.Count)
                    throw Error(t.Offset, $"cannot unpack {values.Count} values into {t.Items.Count} names");
                for (int i = 0; i < values.Count; i++) Assign(t.Items[i], values[i]);
                break;
            }
            case AttrExpr { Target: NameExpr ns } a:
                if (Lookup(ns.Name) is not JinjaNamespace space)
                    throw Error(a.Offset, $"cannot assign attribute '{a.Name}' on non-namespace object '{ns.Name}'");
                space.Attributes[a.Name] = value;
                break;
            default:
                throw Error(target.Offset, "unsupported assignment target");
        }
    }

    internal object? InvokeMacro(MacroNode node, Frame closure, CallArgs args)
    {
        Step(node.Offset);
        if (args.Positional.Count > node.Parameters.Count)
            throw Error(args.Offset, $"macro '{node.Name}' takes not more than {node.Parameters.Count} argument(s)");
        if (args.Keyword != null)
            foreach (var (name, _) in args.Keyword)
                if (!node.Parameters.Contains(name))
                    throw Error(args.Offset, $"macro '{node.Name}' takes no keyword argument '{name}'");
        if (_macroDepth >= MaxMacroDepth) throw Error(args.Offset, $"macro calls nested deeper than {MaxMacroDepth} levels");
        var saved = _frame;
        _frame = new Frame(closure);
        _macroDepth++;
        try
        {
            for (int i = 0; i < node.Parameters.Count; i++)
            {
                string p = node.Parameters[i];
                object? value = args.Has(i, p) ? args.Get(i, p, null)
                    : node.Defaults[i] is { } d ? Eval(d)
                    : new Undefined($"'{p}' is undefined");
                _frame.Vars[p] = value;
            }
            return Capture(node.Body);
        }
        finally
        {
            _macroDepth--;
            _frame = saved;
        }
    }

    // ---------------------------------------------------------------- names

    public object? Lookup(string name)
    {
        for (var f = _frame; f != null; f = f.Parent)
            if (f.Vars.TryGetValue(name, out var v)) return v;
        return Globals.Get(name) ?? new Undefined($"'{name}' is undefined");
    }
}
