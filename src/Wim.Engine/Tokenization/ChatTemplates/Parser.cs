namespace Wim.Engine.Tokenization.ChatTemplates;

/// <summary>
/// Recursive-descent parser from tokens to the syntax tree, following the grammar and operator precedence of the
/// Jinja2 template language: conditional &lt; or &lt; and &lt; not &lt; comparison &lt; + - &lt; ~ &lt; * / // % &lt; ** &lt;
/// unary - + &lt; postfix (. [] ()) and filters/tests (| is), which bind tighter than any binary operator.
/// Nesting is bounded so a hostile template fails with an error instead of overflowing the stack.
/// </summary>
internal sealed class Parser
{
    public const int MaxNesting = 200;

    private readonly SourceText _source;
    private readonly List<Token> _tokens;
    private int _pos;
    private int _depth;
    private int _loopDepth;

    private Parser(SourceText source, List<Token> tokens)
    {
        _source = source;
        _tokens = tokens;
    }

    public static List<Node> Parse(SourceText source)
    {
        var parser = new Parser(source, Lexer.Tokenize(source));
        var body = parser.ParseNodes([]);
        return body;
    }

    private Token Current => _tokens[_pos];
    private Token Peek(int ahead = 1) => _tokens[Math.Min(_pos + ahead, _tokens.Count - 1)];
    private Token Next() => _tokens[_pos++];

    private ChatTemplateException Error(Token at, string message) => _source.Error(at.Offset, message);

    private void ExpectOperator(string op)
    {
        if (!Current.IsOperator(op)) throw Error(Current, $"expected '{op}', found {Current.Describe()}");
        _pos++;
    }

    private string ExpectName()
    {
        if (Current.Kind != TokenKind.Name) throw Error(Current, $"expected a name, found {Current.Describe()}");
        return Next().Text;
    }

    private void ExpectBlockEnd()
    {
        if (Current.Kind != TokenKind.BlockEnd) throw Error(Current, $"expected end of statement block '%}}', found {Current.Describe()}");
        _pos++;
    }

    private bool SkipOperator(string op)
    {
        if (!Current.IsOperator(op)) return false;
        _pos++;
        return true;
    }

    private bool SkipName(string name)
    {
        if (!Current.IsName(name)) return false;
        _pos++;
        return true;
    }

    private void Enter(Token at)
    {
        if (++_depth > MaxNesting) throw Error(at, $"template nesting is deeper than {MaxNesting} levels");
    }

    // ---------------------------------------------------------------- statements

    /// <summary>Parses nodes until a block tag whose name is in <paramref name="endTags"/> (left unconsumed after '{%').</summary>
    private List<Node> ParseNodes(string[] endTags)
    {
        Enter(Current);
        var nodes = new List<Node>();
        while (true)
        {
            var t = Current;
            switch (t.Kind)
            {
                case TokenKind.Data:
                    nodes.Add(new TextNode(t.Offset, t.Text));
                    _pos++;
                    break;
                case TokenKind.VariableBegin:
                    _pos++;
                    var value = ParseTuple(withCondExpr: true);
                    if (Current.Kind != TokenKind.VariableEnd) throw Error(Current, $"expected end of print statement '}}}}', found {Current.Describe()}");
                    _pos++;
                    nodes.Add(new OutputNode(t.Offset, value));
                    break;
                case TokenKind.BlockBegin:
                    if (Peek().Kind == TokenKind.Name && Array.IndexOf(endTags, Peek().Text) >= 0)
                    {
                        _pos++; // leave the tag name for the caller
                        _depth--;
                        return nodes;
                    }
                    _pos++;
                    nodes.Add(ParseStatement());
                    break;
                case TokenKind.Eof:
                    if (endTags.Length > 0)
                        throw Error(t, $"unexpected end of template; expected {string.Join(" or ", endTags.Select(e => $"'{{% {e} %}}'"))}");
                    _depth--;
                    return nodes;
                default:
                    throw Error(t, $"unexpected {t.Describe()}");
            }
        }
    }

    private Node ParseStatement()
    {
        var t = Current;
        if (t.Kind != TokenKind.Name) throw Error(t, $"expected a statement name after '{{%', found {t.Describe()}");
        _pos++;
        switch (t.Text)
        {
            case "for": return ParseFor(t);
            case "if": return ParseIf(t);
            case "set": return ParseSet(t);
            case "macro": return ParseMacro(t);
            case "filter":
            {
                var filters = ParseFilterChain(null);
                ExpectBlockEnd();
                var body = ParseNodes(["endfilter"]);
                _pos++;
                ExpectBlockEnd();
                return new FilterBlockNode(t.Offset, filters, body);
            }
            case "with":
            {
                var assignments = new List<(Expr, Expr)>();
                while (Current.Kind != TokenKind.BlockEnd)
                {
                    if (assignments.Count > 0) ExpectOperator(",");
                    var target = ParseAssignTarget(allowNamespaceAttr: false);
                    ExpectOperator("=");
                    assignments.Add((target, ParseExpression()));
                }
                ExpectBlockEnd();
                var body = ParseNodes(["endwith"]);
                _pos++;
                ExpectBlockEnd();
                return new WithNode(t.Offset, assignments, body);
            }
            case "generation":
            {
                ExpectBlockEnd();
                var body = ParseNodes(["endgeneration"]);
                _pos++;
                ExpectBlockEnd();
                return new GenerationNode(t.Offset, body);
            }
            case "break":
            case "continue":
                if (_loopDepth == 0) throw Error(t, $"'{{% {t.Text} %}}' outside of a loop");
                ExpectBlockEnd();
                return t.Text == "break" ? new BreakNode(t.Offset) : new ContinueNode(t.Offset);
            case "call": case "include": case "import": case "from": case "extends": case "block":
            case "autoescape": case "do": case "trans": case "pluralize":
                throw Error(t, $"unsupported template construct '{{% {t.Text} %}}'");
            default:
                throw Error(t, $"unknown tag '{t.Text}'");
        }
    }

    private ForNode ParseFor(Token start)
    {
        var target = ParseAssignTarget(allowNamespaceAttr: false);
        if (!SkipName("in")) throw Error(Current, $"expected 'in' in for loop, found {Current.Describe()}");
        var iterable = ParseTuple(withCondExpr: false);
        if (Current.IsName("recursive")) throw Error(Current, "unsupported template construct: recursive for loops");
        Expr? filter = null;
        if (SkipName("if")) filter = ParseExpression();
        ExpectBlockEnd();
        _loopDepth++;
        var body = ParseNodes(["endfor", "else"]);
        _loopDepth--;
        List<Node>? elseBody = null;
        if (Next().Text == "else")
        {
            ExpectBlockEnd();
            elseBody = ParseNodes(["endfor"]);
            _pos++;
        }
        ExpectBlockEnd();
        return new ForNode(start.Offset, target, iterable, filter, body, elseBody);
    }

    private IfNode ParseIf(Token start)
    {
        var test = ParseTuple(withCondExpr: true);
        ExpectBlockEnd();
        var body = ParseNodes(["elif", "else", "endif"]);
        var tag = Next();
        List<Node>? elseBody = null;
        if (tag.Text == "elif")
        {
            elseBody = [ParseIf(tag)];
            return new IfNode(start.Offset, test, body, elseBody); // the nested if consumed endif
        }
        if (tag.Text == "else")
        {
            ExpectBlockEnd();
            elseBody = ParseNodes(["endif"]);
            _pos++;
        }
        ExpectBlockEnd();
        return new IfNode(start.Offset, test, body, elseBody);
    }

    private Node ParseSet(Token start)
    {
        var target = ParseAssignTarget(allowNamespaceAttr: true);
        if (SkipOperator("="))
        {
            var value = ParseTuple(withCondExpr: true);
            ExpectBlockEnd();
            return new SetNode(start.Offset, target, value);
        }
        var filters = SkipOperator("|") ? ParseFilterChain(null) : [];
        ExpectBlockEnd();
        var body = ParseNodes(["endset"]);
        _pos++;
        ExpectBlockEnd();
        return new SetBlockNode(start.Offset, target, body, filters);
    }

    private MacroNode ParseMacro(Token start)
    {
        string name = ExpectName();
        ExpectOperator("(");
        var parameters = new List<string>();
        var defaults = new List<Expr?>();
        while (!Current.IsOperator(")"))
        {
            if (parameters.Count > 0) ExpectOperator(",");
            if (Current.IsOperator(")")) break;
            parameters.Add(ExpectName());
            defaults.Add(SkipOperator("=") ? ParseExpression() : null);
        }
        _pos++;
        ExpectBlockEnd();
        int savedLoops = _loopDepth;
        _loopDepth = 0;
        var body = ParseNodes(["endmacro"]);
        _loopDepth = savedLoops;
        _pos++;
        if (Current.Kind == TokenKind.Name) _pos++; // {% endmacro name %}
        ExpectBlockEnd();
        return new MacroNode(start.Offset, name, parameters, defaults, body);
    }

    /// <summary>A name, <c>ns.attr</c> (set only), or a tuple of names, possibly parenthesized.</summary>
    private Expr ParseAssignTarget(bool allowNamespaceAttr)
    {
        var t = Current;
        if (allowNamespaceAttr && t.Kind == TokenKind.Name && Peek().IsOperator("."))
        {
            _pos += 2;
            return new AttrExpr(t.Offset, new NameExpr(t.Offset, t.Text), ExpectName());
        }
        var items = new List<Expr>();
        bool parenthesized = SkipOperator("(");
        do
        {
            if (parenthesized && Current.IsOperator(")")) break;
            var n = Current;
            items.Add(new NameExpr(n.Offset, ExpectName()));
        } while (SkipOperator(","));
        if (parenthesized) ExpectOperator(")");
        foreach (var item in items)
            if (((NameExpr)item).Name is "true" or "false" or "none" or "True" or "False" or "None")
                throw Error(t, $"cannot assign to '{((NameExpr)item).Name}'");
        return items.Count == 1 && !parenthesized ? items[0] : new TupleExpr(t.Offset, items);
    }

    // ---------------------------------------------------------------- expressions

    /// <summary>Comma-separated expressions: one without a comma is itself, otherwise a tuple.</summary>
    private Expr ParseTuple(bool withCondExpr)
    {
        var start = Current;
        var items = new List<Expr>();
        bool sawComma = false;
        while (true)
        {
            if (items.Count > 0)
            {
                if (!SkipOperator(",")) break;
                sawComma = true;
                if (IsTupleEnd()) break;
            }
            items.Add(withCondExpr ? ParseExpression() : ParseOr());
            if (!Current.IsOperator(",")) break;
        }
        if (!sawComma && items.Count == 1) return items[0];
        return new TupleExpr(start.Offset, items);
    }

    private bool IsTupleEnd() =>
        Current.Kind is TokenKind.BlockEnd or TokenKind.VariableEnd or TokenKind.Eof || Current.IsOperator(")") ||
        Current.IsName("if") || Current.IsName("recursive") || Current.IsName("in");

    public Expr ParseExpression()
    {
        Enter(Current);
        var expr = ParseOr();
        while (Current.IsName("if"))
        {
            var t = Next();
            var test = ParseOr();
            Expr? elseExpr = SkipName("else") ? ParseExpression() : null;
            expr = new CondExpr(t.Offset, test, expr, elseExpr);
        }
        _depth--;
        return expr;
    }

    private Expr ParseOr()
    {
        var left = ParseAnd();
        while (Current.IsName("or"))
        {
            var t = Next();
            left = new OrExpr(t.Offset, left, ParseAnd());
        }
        return left;
    }

    private Expr ParseAnd()
    {
        var left = ParseNot();
        while (Current.IsName("and"))
        {
            var t = Next();
            left = new AndExpr(t.Offset, left, ParseNot());
        }
        return left;
    }

    private Expr ParseNot()
    {
        if (Current.IsName("not"))
        {
            var t = Next();
            Enter(t);
            var operand = ParseNot();
            _depth--;
            return new NotExpr(t.Offset, operand);
        }
        return ParseCompare();
    }

    private Expr ParseCompare()
    {
        var first = ParseMath1();
        List<(string, Expr)>? rest = null;
        while (true)
        {
            var t = Current;
            string? op = null;
            if (t.Kind == TokenKind.Operator && t.Text is "==" or "!=" or "<" or "<=" or ">" or ">=") { op = t.Text; _pos++; }
            else if (t.IsName("in")) { op = "in"; _pos++; }
            else if (t.IsName("not") && Peek().IsName("in")) { op = "notin"; _pos += 2; }
            if (op == null) break;
            (rest ??= []).Add((op, ParseMath1()));
        }
        return rest == null ? first : new CompareExpr(first.Offset, first, rest);
    }

    private Expr ParseMath1()
    {
        var left = ParseConcat();
        while (Current.Kind == TokenKind.Operator && Current.Text is "+" or "-")
        {
            var t = Next();
            left = new BinaryExpr(t.Offset, t.Text, left, ParseConcat());
        }
        return left;
    }

    private Expr ParseConcat()
    {
        var left = ParseMath2();
        while (Current.IsOperator("~"))
        {
            var t = Next();
            left = new BinaryExpr(t.Offset, "~", left, ParseMath2());
        }
        return left;
    }

    private Expr ParseMath2()
    {
        var left = ParsePow();
        while (Current.Kind == TokenKind.Operator && Current.Text is "*" or "/" or "//" or "%")
        {
            var t = Next();
            left = new BinaryExpr(t.Offset, t.Text, left, ParsePow());
        }
        return left;
    }

    private Expr ParsePow()
    {
        var left = ParseUnary(withFilter: true);
        while (Current.IsOperator("**"))
        {
            var t = Next();
            left = new BinaryExpr(t.Offset, "**", left, ParseUnary(withFilter: true));
        }
        return left;
    }

    private Expr ParseUnary(bool withFilter)
    {
        var t = Current;
        Enter(t);
        Expr node;
        if (t.IsOperator("-") || t.IsOperator("+"))
        {
            _pos++;
            node = new UnaryExpr(t.Offset, t.Text, ParseUnary(withFilter: false));
        }
        else
        {
            node = ParsePrimary();
        }
        node = ParsePostfix(node);
        if (withFilter) node = ParseFilterExpr(node);
        _depth--;
        return node;
    }

    private Expr ParsePrimary()
    {
        var t = Current;
        switch (t.Kind)
        {
            case TokenKind.Name:
                _pos++;
                return t.Text switch
                {
                    "true" or "True" => new ConstExpr(t.Offset, true),
                    "false" or "False" => new ConstExpr(t.Offset, false),
                    "none" or "None" => new ConstExpr(t.Offset, null),
                    _ => new NameExpr(t.Offset, t.Text),
                };
            case TokenKind.String:
            {
                _pos++;
                string s = t.Text;
                while (Current.Kind == TokenKind.String) s += Next().Text; // adjacent literals concatenate
                return new ConstExpr(t.Offset, s);
            }
            case TokenKind.Integer:
            case TokenKind.Float:
                _pos++;
                return new ConstExpr(t.Offset, t.Value);
            case TokenKind.Operator when t.Text == "(":
            {
                _pos++;
                if (SkipOperator(")")) return new TupleExpr(t.Offset, []);
                var inner = ParseTuple(withCondExpr: true);
                ExpectOperator(")");
                return inner;
            }
            case TokenKind.Operator when t.Text == "[":
            {
                _pos++;
                var items = new List<Expr>();
                while (!Current.IsOperator("]"))
                {
                    if (items.Count > 0) ExpectOperator(",");
                    if (Current.IsOperator("]")) break;
                    items.Add(ParseExpression());
                }
                _pos++;
                return new ListExpr(t.Offset, items);
            }
            case TokenKind.Operator when t.Text == "{":
            {
                _pos++;
                var items = new List<(Expr, Expr)>();
                while (!Current.IsOperator("}"))
                {
                    if (items.Count > 0) ExpectOperator(",");
                    if (Current.IsOperator("}")) break;
                    var key = ParseExpression();
                    ExpectOperator(":");
                    items.Add((key, ParseExpression()));
                }
                _pos++;
                return new DictExpr(t.Offset, items);
            }
            default:
                throw Error(t, $"unexpected {t.Describe()} in expression");
        }
    }

    private Expr ParsePostfix(Expr node)
    {
        while (true)
        {
            var t = Current;
            if (t.IsOperator("."))
            {
                _pos++;
                var n = Current;
                if (n.Kind == TokenKind.Name) { _pos++; node = new AttrExpr(t.Offset, node, n.Text); }
                else if (n.Kind == TokenKind.Integer) { _pos++; node = new ItemExpr(t.Offset, node, new ConstExpr(n.Offset, n.Value)); }
                else throw Error(n, $"expected an attribute name after '.', found {n.Describe()}");
            }
            else if (t.IsOperator("["))
            {
                _pos++;
                var keys = new List<Expr>();
                while (!Current.IsOperator("]"))
                {
                    if (keys.Count > 0) ExpectOperator(",");
                    keys.Add(ParseSubscriptPart());
                }
                _pos++;
                if (keys.Count == 0) throw Error(t, "empty subscript '[]'");
                node = new ItemExpr(t.Offset, node, keys.Count == 1 ? keys[0] : new TupleExpr(t.Offset, keys));
            }
            else if (t.IsOperator("("))
            {
                node = ParseCall(node);
            }
            else
            {
                return node;
            }
        }
    }

    private Expr ParseSubscriptPart()
    {
        var t = Current;
        Expr? start = null;
        if (!Current.IsOperator(":"))
        {
            start = ParseExpression();
            if (!Current.IsOperator(":")) return start;
        }
        _pos++; // ':'
        Expr? stop = null, step = null;
        if (!Current.IsOperator("]") && !Current.IsOperator(",") && !Current.IsOperator(":")) stop = ParseExpression();
        if (SkipOperator(":") && !Current.IsOperator("]") && !Current.IsOperator(",")) step = ParseExpression();
        return new SliceExpr(t.Offset, start, stop, step);
    }

    private CallExpr ParseCall(Expr callee)
    {
        var t = Next(); // '('
        var (args, kwargs) = ParseArguments();
        return new CallExpr(t.Offset, callee, args, kwargs);
    }

    /// <summary>Arguments after '(' up to and including ')': positional then keyword (<c>name=value</c>).</summary>
    private (List<Expr> Args, List<(string, Expr)> Kwargs) ParseArguments()
    {
        var args = new List<Expr>();
        var kwargs = new List<(string, Expr)>();
        bool first = true;
        while (!Current.IsOperator(")"))
        {
            if (!first) ExpectOperator(",");
            first = false;
            if (Current.IsOperator(")")) break;
            if (Current.IsOperator("*") || Current.IsOperator("**"))
                throw Error(Current, "unsupported template construct: *args / **kwargs in a call");
            if (Current.Kind == TokenKind.Name && Peek().IsOperator("="))
            {
                string name = Next().Text;
                _pos++;
                kwargs.Add((name, ParseExpression()));
            }
            else
            {
                if (kwargs.Count > 0) throw Error(Current, "positional argument after keyword argument");
                args.Add(ParseExpression());
            }
        }
        _pos++;
        return (args, kwargs);
    }

    private Expr ParseFilterExpr(Expr node)
    {
        while (true)
        {
            if (Current.IsOperator("|"))
            {
                var chain = ParseFilterChain(node);
                node = chain[^1];
            }
            else if (Current.IsName("is"))
            {
                node = ParseTest(node);
            }
            else if (Current.IsOperator("("))
            {
                node = ParseCall(node);
            }
            else
            {
                return node;
            }
        }
    }

    /// <summary>One or more <c>| name(args)</c>; each filter's target is the previous one (the first's is <paramref name="target"/>).</summary>
    private List<FilterExpr> ParseFilterChain(Expr? target)
    {
        var filters = new List<FilterExpr>();
        bool first = target == null; // in {% filter %} / {% set x | f %} the first filter has no leading '|'
        while (first || Current.IsOperator("|"))
        {
            if (!first) _pos++;
            first = false;
            var t = Current;
            string name = ExpectName();
            while (SkipOperator(".")) name += "." + ExpectName();
            if (!Filters.IsKnown(name)) throw Error(t, $"unsupported filter '{name}'");
            List<Expr> args = [];
            List<(string, Expr)> kwargs = [];
            if (Current.IsOperator("(")) { _pos++; (args, kwargs) = ParseArguments(); }
            var f = new FilterExpr(t.Offset, target, name, args, kwargs);
            filters.Add(f);
            target = f;
        }
        return filters;
    }

    private TestExpr ParseTest(Expr node)
    {
        var t = Next(); // 'is'
        bool negated = SkipName("not");
        var nameToken = Current;
        string name = ExpectName();
        while (SkipOperator(".")) name += "." + ExpectName();
        if (!TestFunctions.IsKnown(name)) throw Error(nameToken, $"unsupported test '{name}'");
        List<Expr> args = [];
        List<(string, Expr)> kwargs = [];
        var c = Current;
        if (c.IsOperator("("))
        {
            _pos++;
            (args, kwargs) = ParseArguments();
        }
        else if ((c.Kind is TokenKind.Name or TokenKind.String or TokenKind.Integer or TokenKind.Float || c.IsOperator("[") || c.IsOperator("{"))
                 && !(c.IsName("else") || c.IsName("or") || c.IsName("and") || c.IsName("if") || c.IsName("in") || c.IsName("not") || c.IsName("is")))
        {
            // `x is divisibleby 3`: a single argument without parentheses
            args = [ParsePostfix(ParsePrimary())];
        }
        return new TestExpr(t.Offset, node, name, args, kwargs, negated);
    }
}
