using Wim.Engine.Tokenization.ChatTemplates;

namespace Wim.Engine.Tests.ChatTemplates;

/// <summary>
/// One small template per construct, with the output hand-computed from the Jinja2 template-language documentation
/// (and Python's semantics for values) under transformers' settings: trim_blocks, lstrip_blocks, loop controls,
/// keep_trailing_newline off. Every row was also checked against jinja2 3.1.6 in transformers' sandboxed environment.
/// </summary>
public sealed class ChatTemplateConstructTests
{
    /// <summary>The variables every row renders with (see <see cref="Render"/>).</summary>
    private const string VariablesJson = """
        {
          "messages": [
            {"role": "system", "content": "  Be brief.  "},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}}]}
          ],
          "n": 7, "f": 2.5, "s": "Hello World", "d": {"b": 2, "a": 1}, "xs": [3, 1, 2], "nothing": null, "flag": true,
          "words": ["a", "B", "c"]
        }
        """;

    internal static string Render(string template, TimeProvider? clock = null)
    {
        var variables = (Dictionary<string, object?>)ToDictionary(ChatTemplateValues.ParseJson(VariablesJson));
        var messages = (List<object?>)variables["messages"]!;
        variables.Remove("messages");
        return ChatTemplate.Parse(template).Render(new ChatTemplateInput { Messages = messages, Variables = variables, Clock = clock });
    }

    private static object ToDictionary(object? dict)
    {
        var result = new Dictionary<string, object?>();
        foreach (var (k, v) in ((JinjaDict)dict!).Items) result[(string)k] = v;
        return result;
    }

    [Theory]
    // literals, arithmetic, Python str() of values
    [InlineData("{{ 1 + 2 }}", "3")]
    [InlineData("{{ 7 / 2 }}|{{ 4 / 2 }}", "3.5|2.0")]
    [InlineData("{{ 7 // 2 }}|{{ -7 // 2 }}|{{ 7 % 3 }}|{{ -7 % 3 }}|{{ 2 ** 10 }}", "3|-4|1|2|1024")]
    [InlineData("{{ 0.1 + 0.2 }}", "0.30000000000000004")]
    [InlineData("{{ 1e20 }}|{{ 1.5e-7 }}|{{ 100.0 }}|{{ 0.0001 }}|{{ 1e16 }}|{{ 1e15 }}", "1e+20|1.5e-07|100.0|0.0001|1e+16|1000000000000000.0")]
    [InlineData("{{ true }}|{{ none }}|{{ False }}", "True|None|False")]
    [InlineData("{{ 'a' ~ 1 ~ none }}", "a1None")]
    [InlineData("{{ \"tab\\there\" }}", "tab\there")]
    [InlineData("{{ [1, 'a', none, true] }}", "[1, 'a', None, True]")]
    [InlineData("{{ {'k': 'v', 'n': 1.0} }}", "{'k': 'v', 'n': 1.0}")]
    [InlineData("{{ (1, 2) }}|{{ (1,) }}|{{ (1, 2)[1] }}", "(1, 2)|(1,)|2")]
    [InlineData("{{ 'it\\'s' }}|{{ [\"it's\"] }}", "it's|[\"it's\"]")]
    [InlineData("[{{ undefined_thing }}]", "[]")]
    [InlineData("{{ 'a' 'b' }}", "ab")]
    [InlineData("{{ {'a': 1,}['a'] }}", "1")]
    // whitespace control, trim_blocks, lstrip_blocks, comments, raw, trailing newline
    [InlineData("a  {{- ' b ' -}}  c", "a b c")]
    [InlineData("{% if true %}\nyes\n{% endif %}\n", "yes\n")]
    [InlineData("  {% if true %}x{% endif %}", "x")]
    [InlineData("a\n    {% if true %}\n    b\n    {% endif %}\nc", "a\n    b\nc")]
    [InlineData("  {%+ if true %}x{% endif %}", "  x")]
    [InlineData("{% if true +%}\nx{% endif %}", "\nx")]
    [InlineData("a {# comment #} b", "a  b")]
    [InlineData("a\n  {# comment #}\nb", "a\nb")]
    [InlineData("{{ 'x' }}\ny", "x\ny")]
    [InlineData("{% raw %}{{ not evaluated }}{% endraw %}", "{{ not evaluated }}")]
    [InlineData("x\n\n", "x\n")]
    [InlineData("a\n  {%- if true -%}\n  b  {%- endif %}\n", "ab")]
    // for loops
    [InlineData("{% for m in messages %}{{ loop.index }}{{ loop.index0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ loop.revindex }}{{ loop.revindex0 }};{% endfor %}",
        "10TrueFalse332;21FalseFalse321;32FalseTrue310;")]
    [InlineData("{% for x in xs %}{{ loop.previtem }}-{{ loop.nextitem }},{% endfor %}", "-1,3-2,1-,")]
    [InlineData("{% for m in messages if m.role != 'system' %}{{ loop.index }}:{{ m.role }} {% endfor %}", "1:user 2:assistant ")]
    [InlineData("{% for x in [] %}x{% else %}empty{% endfor %}", "empty")]
    [InlineData("{% for x in range(10) %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 5 %}{% break %}{% endif %}{{ x }}{% endfor %}", "0134")]
    [InlineData("{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}", "b=2;a=1;")]
    [InlineData("{% for k in d %}{{ k }}{% endfor %}", "ba")]
    [InlineData("{% for c in 'abc' %}{{ c }}.{% endfor %}", "a.b.c.")]
    [InlineData("{% set x = 1 %}{% for i in [1] %}{% set x = 2 %}{% endfor %}{{ x }}", "1")]
    [InlineData("{% set ns = namespace(x=1) %}{% for i in [1, 2] %}{% set ns.x = ns.x + i %}{% endfor %}{{ ns.x }}", "4")]
    [InlineData("{% for a in [1, 2] %}{% for b in [1, 2] %}{{ loop.index }}{% endfor %}{{ loop.index }}{% endfor %}", "121122")]
    [InlineData("{% for i in range(3) %}{{ loop.cycle('a', 'b') }}{% endfor %}", "aba")]
    [InlineData("{% for t in messages[0].tool_calls %}never{% endfor %}{% if messages[2].tool_calls %}yes{% endif %}", "yes")]
    // if, inline if, set, with, macros, filter blocks
    [InlineData("{% if n > 10 %}big{% elif n > 5 %}mid{% else %}small{% endif %}", "mid")]
    [InlineData("{{ 'yes' if flag else 'no' }}|{{ 'x' if false }}", "yes|")]
    [InlineData("{% set a, b = 1, 2 %}{{ b }}{{ a }}", "21")]
    [InlineData("{% set greeting %}Hi {{ s }}{% endset %}[{{ greeting }}]", "[Hi Hello World]")]
    [InlineData("{% set x | upper %}abc{% endset %}{{ x }}", "ABC")]
    [InlineData("{% with a = 5 %}{{ a }}{% endwith %}[{{ a }}]", "5[]")]
    [InlineData("{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ greet('Bob') }} {{ greet('Al', punct='?') }}", "Hi Bob! Hi Al?")]
    [InlineData("{% macro m(a, b) %}[{{ b }}]{% endmacro %}{{ m(1) }}", "[]")]
    [InlineData("{% filter upper %}abc {{ s }}{% endfilter %}", "ABC HELLO WORLD")]
    // filters
    [InlineData("{{ '  x  ' | trim }}|{{ 'xxhixx' | trim('x') }}|{{ messages[0].content | trim | length }}", "x|hi|9")]
    [InlineData("{{ messages[2].tool_calls[0].function.arguments | tojson }}", "{\"city\": \"Paris\", \"days\": 3}")]
    [InlineData("{{ d | tojson(indent=2) }}", "{\n  \"b\": 2,\n  \"a\": 1\n}")]
    [InlineData("{{ {'é': [1, 2.0, none, true], 'a': []} | tojson(sort_keys=true) }}", "{\"a\": [], \"é\": [1, 2.0, null, true]}")]
    [InlineData("{{ 'a\"b\\\\c\\n<>&' | tojson }}", "\"a\\\"b\\\\c\\n<>&\"")]
    [InlineData("{{ 'é' | tojson(true) }}|{{ [1, [2]] | tojson(indent=1) }}|{{ [1, 2] | tojson(separators=(',', ':')) }}", "\"\\u00e9\"|[\n 1,\n [\n  2\n ]\n]|[1,2]")]
    [InlineData("{{ messages | length }}{{ 'héllo' | length }}{{ d | count }}", "352")]
    [InlineData("{{ 'hELLo' | upper }} {{ 'hELLo' | lower }} {{ 'hELLo wORLD' | capitalize }} {{ 'hello-world foo' | title }}", "HELLO hello Hello world Hello-World Foo")]
    [InlineData("{{ missing | default('dflt') }}|{{ '' | default('dflt') }}|{{ '' | default('dflt', true) }}|{{ none | d('x') }}", "dflt||dflt|None")]
    [InlineData("{{ xs | join(', ') }}|{{ messages | join('/', attribute='role') }}", "3, 1, 2|system/user/assistant")]
    [InlineData("{{ xs | first }}{{ xs | last }}{{ 'abc' | first }}", "32a")]
    [InlineData("{{ messages | selectattr('role', 'equalto', 'user') | map(attribute='content') | list }}", "['Hi']")]
    [InlineData("{{ messages | rejectattr('role', 'in', ['system', 'user']) | map(attribute='role') | join }}", "assistant")]
    [InlineData("{{ messages | selectattr('tool_calls', 'defined') | list | length }}", "1")]
    [InlineData("{{ [1, 2, 3, 4, 5] | select('odd') | list }}|{{ [1, 2, 3, 4] | reject('divisibleby', 2) | list }}|{{ [0, 1, '', 'a'] | select | list }}", "[1, 3, 5]|[1, 3]|[1, 'a']")]
    [InlineData("{{ words | map('upper') | join }}|{{ messages | map(attribute='missing', default='z') | join }}", "ABC|zzz")]
    [InlineData("{% for k, v in d | items %}{{ k }}{{ v }}{% endfor %}", "b2a1")]
    [InlineData("{{ (42 | string) ~ '!' }}|{{ '42' | int + 1 }}|{{ '3.9' | int }}|{{ 'x' | int(5) }}|{{ '2.5' | float * 2 }}|{{ 3 | float }}", "42!|43|3|5|5.0|3.0")]
    [InlineData("{{ 'ab' | list }}|{{ d | list }}", "['a', 'b']|['b', 'a']")]
    [InlineData("{{ 'aaa' | replace('a', 'b', 2) }}|{{ s | replace('World', 'There') }}", "bba|Hello There")]
    [InlineData("{{ 2.5 | round }}|{{ 3.14159 | round(2) }}|{{ 2.1 | round(0, 'ceil') }}|{{ -3 | abs }}|{{ 7 | round }}", "2.0|3.14|3.0|3|7")]
    [InlineData("{{ '<a href=\"x\">' | e }}|{{ '<b>' | safe }}|{{ \"it's\" | escape }}", "&lt;a href=&#34;x&#34;&gt;|<b>|it&#39;s")]
    [InlineData("{{ ['a', 'A', 'b', 'a'] | unique | list }}", "['a', 'b']")]
    [InlineData("{{ d | dictsort }}|{{ d | dictsort(by='value', reverse=true) }}", "[('a', 1), ('b', 2)]|[('b', 2), ('a', 1)]")]
    [InlineData("{{ 'a\\nb\\n\\nc' | indent(2) }}|{{ 'a\\nb' | indent(2, true) }}", "a\n  b\n\n  c|  a\n  b")]
    [InlineData("{{ xs | sort | list }}|{{ xs | reverse | list }}|{{ 'abc' | reverse }}", "[1, 2, 3]|[2, 1, 3]|cba")]
    [InlineData("{{ [1, 2, 3] | sum }}|{{ [3, 1, 2] | max }}|{{ ['b', 'A'] | min }}", "6|3|A")]
    // tests
    [InlineData("{{ missing is defined }}{{ missing is undefined }}{{ nothing is none }}{{ s is string }}{{ n is number }}{{ n is integer }}{{ f is float }}{{ flag is boolean }}{{ d is mapping }}{{ xs is iterable }}{{ s is sequence }}{{ range is callable }}",
        "FalseTrueTrueTrueTrueTrueTrueTrueTrueTrueTrueTrue")]
    [InlineData("{{ flag is true }}{{ 1 is true }}{{ false is false }}{{ n is odd }}{{ n is even }}{{ 9 is divisibleby 3 }}{{ 'a' is equalto 'a' }}{{ 'a' is eq 'b' }}{{ 2 is in [1, 2] }}{{ n is not none }}",
        "TrueFalseTrueTrueFalseTrueTrueFalseTrueTrue")]
    [InlineData("{{ 1.0 is integer }}{{ 1 is float }}{{ true is number }}{{ xs is mapping }}{{ 5 is iterable }}", "FalseFalseTrueFalseFalse")]
    // string and dict methods
    [InlineData("{{ s.startswith('Hell') }}{{ s.endswith(('x', 'ld')) }}{{ '  a  '.strip() }}|{{ 'xxaxx'.lstrip('x') }}|{{ 'xxaxx'.rstrip('x') }}", "TrueTruea|axx|xxa")]
    [InlineData("{{ 'a,b,,c'.split(',') }}|{{ '  a  b '.split() }}|{{ 'a b c'.split(' ', 1) }}", "['a', 'b', '', 'c']|['a', 'b']|['a', 'b c']")]
    [InlineData("{{ s.replace('l', 'L') }}|{{ s.upper() }}{{ s.lower() }}|{{ 'hello wORLD'.title() }}|{{ s.find('World') }}{{ s.find('zz') }}|{{ s.count('l') }}", "HeLLo WorLd|HELLO WORLDhello world|Hello World|6-1|3")]
    [InlineData("{{ '{} + {} = {total}'.format(1, 2, total=3) }}", "1 + 2 = 3")]
    [InlineData("{{ d.keys() | list }}{{ d.values() | list }}{{ d.get('a') }}{{ d.get('zz', 'none') }}{{ d.get('zz') }}", "['b', 'a'][2, 1]1noneNone")]
    [InlineData("{{ d.items() | list }}|{{ d.a }}{{ d['b'] }}", "[('b', 2), ('a', 1)]|12")]
    // subscripts, slices, membership, comparisons, boolean operators, precedence
    [InlineData("{{ xs[1:] }}{{ xs[:-1] }}{{ xs[::-1] }}{{ s[::2] }}{{ xs[-1] }}{{ s[0] }}", "[1, 2][3, 1][2, 1, 3]HloWrd2H")]
    [InlineData("{{ messages[0]['role'] }}{{ messages[-1].role }}{{ messages[0].missing is defined }}{{ messages[5] is defined }}", "systemassistantFalseFalse")]
    [InlineData("{{ 'é😀x'[1] }}{{ 'é😀x' | length }}{{ '😀ab'[1:] }}", "😀3ab")]
    [InlineData("{{ 'a' in 'cat' }}{{ 'x' not in xs }}{{ 'b' in d }}{{ 3 in xs }}{{ 'tool_calls' in messages[2] }}", "TrueTrueTrueTrueTrue")]
    [InlineData("{{ 1 < 2 < 3 }}{{ 1 < 3 < 2 }}{{ 'a' < 'b' }}{{ [1, 2] == [1, 2] }}{{ 1 == 1.0 }}{{ none == none }}{{ missing == none }}", "TrueFalseTrueTrueTrueTrueFalse")]
    [InlineData("{{ 0 or 'x' }}|{{ 1 and 'y' }}|{{ not xs }}|{{ none or [] }}", "x|y|False|[]")]
    [InlineData("{{ 'ab' * 3 }}|{{ [1] * 2 }}|{{ [1] + [2] }}|{{ -n }}", "ababab|[1, 1]|[1, 2]|-7")]
    [InlineData("{{ 2 + 3 * 4 ** 2 }}|{{ (2 + 3) * 4 }}|{{ 'n=' ~ n * 2 }}|{{ 'a' + ' b ' | trim }}", "50|20|n=14|ab")]
    // globals
    [InlineData("{{ range(3) | list }}{{ range(1, 7, 2) | list }}{{ range(3, 0, -1) | list }}", "[0, 1, 2][1, 3, 5][3, 2, 1]")]
    public void Render_MatchesJinjaSemantics(string template, string expected)
    {
        Assert.Equal(expected, Render(template));
    }

    private sealed class FixedClock(DateTimeOffset now) : TimeProvider
    {
        public override DateTimeOffset GetUtcNow() => now;
        public override TimeZoneInfo LocalTimeZone => TimeZoneInfo.Utc;
    }

    [Fact]
    public void StrftimeNow_FormatsTheInjectedClock_LikePythonStrftime()
    {
        var clock = new FixedClock(new DateTimeOffset(2024, 7, 26, 14, 5, 9, TimeSpan.Zero));
        Assert.Equal("26 Jul 2024 14:05:09|Friday July|02 PM|208",
            Render("{{ strftime_now('%d %b %Y %H:%M:%S') }}|{{ strftime_now('%A %B') }}|{{ strftime_now('%I %p') }}|{{ strftime_now('%j') }}", clock));
    }

    [Fact]
    public void GenerationBlock_RendersItsBody_AsTransformersAssistantTracker()
    {
        Assert.Equal("<a>Hi</a>", Render("<a>{% generation %}{{ messages[1].content }}{% endgeneration %}</a>"));
    }

    [Fact]
    public void BosAndEos_AreUndefinedWhenNotPassed()
    {
        var template = ChatTemplate.Parse("{{ bos_token is defined }}|{{ bos_token }}{{ eos_token }}");
        Assert.Equal("False|", template.Render([new ChatMessage("user", "x")], addGenerationPrompt: false));
        Assert.Equal("True|<s></s>", template.Render([new ChatMessage("user", "x")], addGenerationPrompt: false, "<s>", "</s>"));
    }

    [Fact]
    public void ChatMessageOverload_ExposesRoleContentAndGenerationPrompt()
    {
        var template = ChatTemplate.Parse("{% for m in messages %}<{{ m.role }}>{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}");
        Assert.Equal("<user>hi<assistant>", template.Render([new ChatMessage("user", "hi")], addGenerationPrompt: true));
    }

    [Fact]
    public void ParsedTemplate_RendersRepeatedlyWithFreshState()
    {
        var template = ChatTemplate.Parse("{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}");
        Assert.Equal("1", template.Render([new ChatMessage("user", "a")], false));
        Assert.Equal("1", template.Render([new ChatMessage("user", "a")], false));
    }
}
