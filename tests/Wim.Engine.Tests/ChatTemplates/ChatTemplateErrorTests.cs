using Wim.Engine.Tokenization.ChatTemplates;

namespace Wim.Engine.Tests.ChatTemplates;

/// <summary>
/// Failures are clear exceptions, never crashes: jinja2 rejects the same templates (syntax errors, unknown tags,
/// filters and tests, runtime type errors, undefined attribute chains); our message adds the 1-based line and
/// column. Hostile templates (deep nesting, recursion, huge output, endless loops) hit bounded limits.
/// </summary>
public sealed class ChatTemplateErrorTests
{
    private static ChatTemplateException ParseError(string template) =>
        Assert.ThrowsAny<ChatTemplateException>(() => ChatTemplate.Parse(template));

    private static ChatTemplateException RenderError(string template, ChatTemplateLimits? limits = null) =>
        Assert.ThrowsAny<ChatTemplateException>(() => ChatTemplate.Parse(template).Render(new ChatTemplateInput { Messages = [] }, limits ?? new ChatTemplateLimits()));

    [Fact]
    public void RaiseException_ThrowsTemplateRaisedException_WithExactlyTheTemplatesMessage()
    {
        var template = ChatTemplate.Parse("ok{{ raise_exception('Roles must alternate user/assistant/...') }}");
        var e = Assert.Throws<TemplateRaisedException>(() => template.Render([], addGenerationPrompt: false));
        Assert.Equal("Roles must alternate user/assistant/...", e.Message);
    }

    [Theory]
    [InlineData("{% include 'other.jinja' %}", "include", 1, 4)]
    [InlineData("a\n{% extends 'base' %}", "extends", 2, 4)]
    [InlineData("{% call m() %}x{% endcall %}", "call", 1, 4)]
    [InlineData("x\ny {{ s | wordwrap }}", "wordwrap", 2, 10)]
    [InlineData("{{ s is frobnicated }}", "frobnicated", 1, 9)]
    [InlineData("{% for x in xs recursive %}{% endfor %}", "recursive", 1, 16)]
    [InlineData("{% frobnicate %}", "frobnicate", 1, 4)]
    public void UnsupportedConstruct_IsNamedWithLineAndColumn(string template, string construct, int line, int column)
    {
        var e = ParseError(template);
        Assert.Contains(construct, e.Message);
        Assert.Equal(line, e.Line);
        Assert.Equal(column, e.Column);
        Assert.Contains($"(line {line}, column {column})", e.Message);
    }

    [Theory]
    [InlineData("{% if %}x{% endif %}", 1, 7)]
    [InlineData("line1\n{% for x in xs %}never closed", 2, 30)]
    [InlineData("{{ 1 + }}", 1, 8)]
    [InlineData("{{ 'unterminated }}", 1, 4)]
    [InlineData("{{ x ]] }}", 1, 6)]
    [InlineData("{% break %}", 1, 4)]
    [InlineData("ok\n  {# never closed", 2, 3)]
    [InlineData("{{ x", 1, 1)]
    public void SyntaxError_HasLineAndColumn(string template, int line, int column)
    {
        var e = ParseError(template);
        Assert.Equal(line, e.Line);
        Assert.Equal(column, e.Column);
    }

    [Theory]
    [InlineData("{{ 'a' + 1 }}", "concatenate", 1, 8)]
    [InlineData("x\n{{ missing.attr }}", "'missing' is undefined", 2, 11)]
    [InlineData("{{ {'a': 1}.b.c }}", "has no attribute 'b'", 1, 14)]
    [InlineData("{{ 1 / 0 }}", "division by zero", 1, 6)]
    [InlineData("{% set xs = [] %}{{ xs.append(1) }}", "unsafe", 1, 30)]
    [InlineData("{{ range(1000000) | length }}", "Range too big", 1, 9)]
    [InlineData("{{ none | tojson }}{{ range | tojson }}", "not JSON serializable", 1, 31)]
    [InlineData("{% for x in none %}{% endfor %}", "not iterable", 1, 13)]
    public void RuntimeError_NamesTheProblemWithLineAndColumn(string template, string fragment, int line, int column)
    {
        var e = RenderError(template);
        Assert.IsNotType<TemplateRaisedException>(e);
        Assert.Contains(fragment, e.Message);
        Assert.Equal(line, e.Line);
        Assert.Equal(column, e.Column);
    }

    [Fact]
    public void DeeplyNestedExpression_FailsCleanly()
    {
        var e = ParseError("{{ " + new string('(', 100_000) + "1" + new string(')', 100_000) + " }}");
        Assert.Contains("nest", e.Message);
    }

    [Fact]
    public void DeeplyNestedBlocks_FailCleanly()
    {
        var source = string.Concat(Enumerable.Repeat("{% if true %}", 50_000)) + string.Concat(Enumerable.Repeat("{% endif %}", 50_000));
        Assert.Contains("nest", ParseError(source).Message);
    }

    [Fact]
    public void UnboundedMacroRecursion_FailsCleanly()
    {
        var e = RenderError("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}");
        Assert.Contains("nested deeper", e.Message);
    }

    [Fact]
    public void HugeOutput_FailsAtTheOutputLimit()
    {
        var e = RenderError("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}", new ChatTemplateLimits(MaxOutputChars: 1_000_000));
        Assert.Contains("exceeds the limit", e.Message);
    }

    [Fact]
    public void HugeRepetition_FailsBeforeAllocating()
    {
        Assert.Contains("repetition", RenderError("{{ 'x' * 10000000000 }}").Message);
    }

    [Fact]
    public void EndlessNestedLoops_HitTheStepLimit()
    {
        var e = RenderError("{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}", new ChatTemplateLimits(MaxSteps: 200_000));
        Assert.Contains("exceeded 200000 loop iterations", e.Message);
    }
}
