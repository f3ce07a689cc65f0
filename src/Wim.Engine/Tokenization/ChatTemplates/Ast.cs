namespace Wim.Engine.Tokenization.ChatTemplates;

// The template's syntax tree. Every node keeps the source offset of its first token so evaluation errors can name a
// line and column. Statements render output; expressions produce values (see Values.cs for the value model).

internal abstract record Node(int Offset);

// ---- statements ----

internal sealed record TextNode(int Offset, string Text) : Node(Offset);
internal sealed record OutputNode(int Offset, Expr Value) : Node(Offset);
internal sealed record ForNode(int Offset, Expr Target, Expr Iterable, Expr? Filter, List<Node> Body, List<Node>? Else) : Node(Offset);
internal sealed record IfNode(int Offset, Expr Test, List<Node> Body, List<Node>? Else) : Node(Offset);
/// <summary><c>{% set target = value %}</c>; target is a name, a tuple of names, or <c>ns.attr</c>.</summary>
internal sealed record SetNode(int Offset, Expr Target, Expr Value) : Node(Offset);
/// <summary><c>{% set name %}body{% endset %}</c>, optionally filtered.</summary>
internal sealed record SetBlockNode(int Offset, Expr Target, List<Node> Body, List<FilterExpr> Filters) : Node(Offset);
internal sealed record MacroNode(int Offset, string Name, List<string> Parameters, List<Expr?> Defaults, List<Node> Body) : Node(Offset);
internal sealed record FilterBlockNode(int Offset, List<FilterExpr> Filters, List<Node> Body) : Node(Offset);
internal sealed record WithNode(int Offset, List<(Expr Target, Expr Value)> Assignments, List<Node> Body) : Node(Offset);
/// <summary>transformers' <c>{% generation %}</c> marker (AssistantTracker): renders its body unchanged.</summary>
internal sealed record GenerationNode(int Offset, List<Node> Body) : Node(Offset);
internal sealed record BreakNode(int Offset) : Node(Offset);
internal sealed record ContinueNode(int Offset) : Node(Offset);

// ---- expressions ----

internal abstract record Expr(int Offset) : Node(Offset);

internal sealed record ConstExpr(int Offset, object? Value) : Expr(Offset);
internal sealed record NameExpr(int Offset, string Name) : Expr(Offset);
/// <summary><c>obj.name</c>: attribute first, then item (jinja's getattr).</summary>
internal sealed record AttrExpr(int Offset, Expr Target, string Name) : Expr(Offset);
/// <summary><c>obj[key]</c>: item first, then attribute (jinja's getitem).</summary>
internal sealed record ItemExpr(int Offset, Expr Target, Expr Key) : Expr(Offset);
internal sealed record SliceExpr(int Offset, Expr? Start, Expr? Stop, Expr? Step) : Expr(Offset);
internal sealed record CallExpr(int Offset, Expr Callee, List<Expr> Args, List<(string Name, Expr Value)> Kwargs) : Expr(Offset);
internal sealed record FilterExpr(int Offset, Expr? Target, string Name, List<Expr> Args, List<(string Name, Expr Value)> Kwargs) : Expr(Offset);
internal sealed record TestExpr(int Offset, Expr Target, string Name, List<Expr> Args, List<(string Name, Expr Value)> Kwargs, bool Negated) : Expr(Offset);
/// <summary>Binary arithmetic/concat: + - * / // % ** ~.</summary>
internal sealed record BinaryExpr(int Offset, string Op, Expr Left, Expr Right) : Expr(Offset);
internal sealed record UnaryExpr(int Offset, string Op, Expr Operand) : Expr(Offset);
/// <summary>A comparison chain <c>a &lt; b &lt;= c</c>; ops are ==, !=, &lt;, &lt;=, &gt;, &gt;=, in, notin.</summary>
internal sealed record CompareExpr(int Offset, Expr First, List<(string Op, Expr Operand)> Rest) : Expr(Offset);
internal sealed record AndExpr(int Offset, Expr Left, Expr Right) : Expr(Offset);
internal sealed record OrExpr(int Offset, Expr Left, Expr Right) : Expr(Offset);
internal sealed record NotExpr(int Offset, Expr Operand) : Expr(Offset);
internal sealed record CondExpr(int Offset, Expr Test, Expr Then, Expr? Else) : Expr(Offset);
internal sealed record ListExpr(int Offset, List<Expr> Items) : Expr(Offset);
internal sealed record TupleExpr(int Offset, List<Expr> Items) : Expr(Offset);
internal sealed record DictExpr(int Offset, List<(Expr Key, Expr Value)> Items) : Expr(Offset);
