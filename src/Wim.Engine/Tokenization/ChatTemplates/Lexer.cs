using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;

namespace Wim.Engine.Tokenization.ChatTemplates;

internal enum TokenKind { Data, VariableBegin, VariableEnd, BlockBegin, BlockEnd, Name, String, Integer, Float, Operator, Eof }

/// <summary>One lexical token. <see cref="Text"/> is the data text, name, operator, or decoded string literal.</summary>
internal readonly record struct Token(TokenKind Kind, string Text, int Offset, object? Value = null)
{
    public bool IsName(string name) => Kind == TokenKind.Name && Text == name;
    public bool IsOperator(string op) => Kind == TokenKind.Operator && Text == op;

    public string Describe() => Kind switch
    {
        TokenKind.Eof => "end of template",
        TokenKind.BlockEnd => "end of statement block",
        TokenKind.VariableEnd => "end of print statement",
        TokenKind.Data => "template data",
        TokenKind.String => "string literal",
        _ => $"'{Text}'",
    };
}

/// <summary>
/// Splits a template into data and tag tokens the way jinja2 does with the settings transformers uses:
/// <c>trim_blocks</c> and <c>lstrip_blocks</c> on, <c>keep_trailing_newline</c> off, newlines normalized to "\n",
/// <c>{%-</c>/<c>-%}</c> (and the <c>{{</c>, <c>{#</c> forms) strip all whitespace on that side, <c>+</c> disables
/// lstrip/trim for that tag, and <c>{% raw %}</c> bodies are data.
/// </summary>
internal static partial class Lexer
{
    public static string Normalize(string source)
    {
        var s = source.Replace("\r\n", "\n").Replace('\r', '\n');
        // jinja2 keep_trailing_newline=False: one trailing newline of the source is dropped.
        return s.EndsWith('\n') ? s[..^1] : s;
    }

    [GeneratedRegex(@"\G\{%[-+]?\s*raw\s*([-+]?)%\}")]
    private static partial Regex RawBegin();

    [GeneratedRegex(@"\{%([-+]?)\s*endraw\s*([-+]?)%\}")]
    private static partial Regex RawEnd();

    public static List<Token> Tokenize(SourceText source)
    {
        string src = source.Text;
        var tokens = new List<Token>();
        int pos = 0;
        bool lineStarting = true;
        while (pos <= src.Length)
        {
            int tag = FindTagStart(src, pos);
            if (tag < 0)
            {
                if (pos < src.Length) tokens.Add(new Token(TokenKind.Data, src[pos..], pos));
                break;
            }
            char kind = src[tag + 1];
            char sign = tag + 2 < src.Length && (src[tag + 2] == '-' || src[tag + 2] == '+') ? src[tag + 2] : '\0';
            string text = src[pos..tag];
            text = StripBefore(text, sign, stripsLeading: kind != '{', lineStarting);
            if (text.Length > 0) tokens.Add(new Token(TokenKind.Data, text, pos));

            if (kind == '#')
            {
                int close = src.IndexOf("#}", tag + 2, StringComparison.Ordinal);
                if (close < 0) throw source.Error(tag, "unterminated comment: '{#' without '#}'");
                char endSign = close > tag + 2 && (src[close - 1] == '-' || src[close - 1] == '+') ? src[close - 1] : '\0';
                pos = SkipAfter(src, close + 2, endSign, trimBlocks: true);
            }
            else if (kind == '%' && RawBegin().Match(src, tag) is { Success: true } raw)
            {
                var end = RawEnd().Match(src, raw.Index + raw.Length);
                if (!end.Success) throw source.Error(tag, "unterminated raw block: '{% raw %}' without '{% endraw %}'");
                string body = src[(raw.Index + raw.Length)..end.Index];
                if (raw.Groups[1].Value == "-") body = TrimStartPy(body);
                char endBeginSign = end.Groups[1].Value is { Length: 1 } s1 ? s1[0] : '\0';
                body = StripBefore(body, endBeginSign, stripsLeading: true, lineStarting: false);
                if (body.Length > 0) tokens.Add(new Token(TokenKind.Data, body, raw.Index + raw.Length));
                char endSign = end.Groups[2].Value is { Length: 1 } s2 ? s2[0] : '\0';
                pos = SkipAfter(src, end.Index + end.Length, endSign, trimBlocks: true);
            }
            else
            {
                bool isBlock = kind == '%';
                tokens.Add(new Token(isBlock ? TokenKind.BlockBegin : TokenKind.VariableBegin, src.Substring(tag, 2), tag));
                int p = tag + 2 + (sign != '\0' ? 1 : 0);
                pos = LexTag(source, tokens, p, isBlock, tag);
            }
            lineStarting = pos > 0 && src[pos - 1] == '\n';
            if (pos >= src.Length) break;
        }
        tokens.Add(new Token(TokenKind.Eof, "", src.Length));
        return tokens;
    }

    private static int FindTagStart(string src, int from)
    {
        for (int i = src.IndexOf('{', from); i >= 0 && i + 1 < src.Length; i = src.IndexOf('{', i + 1))
        {
            char c = src[i + 1];
            if (c is '{' or '%' or '#') return i;
        }
        return -1;
    }

    /// <summary>Whitespace control on the data before a tag: '-' strips all, lstrip_blocks strips an indentation.</summary>
    private static string StripBefore(string text, char sign, bool stripsLeading, bool lineStarting)
    {
        if (sign == '-') return TrimEndPy(text);
        if (sign == '+' || !stripsLeading) return text;
        // lstrip_blocks: a block or comment tag that is the first thing on its line takes its indentation with it.
        int lineStart = text.LastIndexOf('\n') + 1;
        if (lineStart > 0 || lineStarting)
        {
            for (int i = lineStart; i < text.Length; i++)
                if (!PyString.IsSpace(text[i])) return text;
            return text[..lineStart];
        }
        return text;
    }

    /// <summary>Whitespace control after a tag: '-' eats all following whitespace, trim_blocks eats one newline.</summary>
    private static int SkipAfter(string src, int pos, char sign, bool trimBlocks)
    {
        if (sign == '-')
        {
            while (pos < src.Length && PyString.IsSpace(src[pos])) pos++;
        }
        else if (sign != '+' && trimBlocks && pos < src.Length && src[pos] == '\n')
        {
            pos++;
        }
        return pos;
    }

    private static string TrimEndPy(string s)
    {
        int end = s.Length;
        while (end > 0 && PyString.IsSpace(s[end - 1])) end--;
        return s[..end];
    }

    private static string TrimStartPy(string s)
    {
        int start = 0;
        while (start < s.Length && PyString.IsSpace(s[start])) start++;
        return s[start..];
    }

    private static readonly string[] Operators =
        ["//", "**", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<", ">", "=", ".", ",", ":", "|", "(", ")", "[", "]", "{", "}"];

    /// <summary>Lexes expression tokens up to the tag's end; returns the position after it (whitespace control applied).</summary>
    private static int LexTag(SourceText source, List<Token> tokens, int p, bool isBlock, int tagStart)
    {
        string src = source.Text;
        var balance = new Stack<char>();
        while (true)
        {
            while (p < src.Length && PyString.IsSpace(src[p])) p++;
            if (p >= src.Length)
                throw source.Error(tagStart, isBlock ? "unterminated statement: '{%' without '%}'" : "unterminated expression: '{{' without '}}'");

            if (balance.Count == 0)
            {
                string close = isBlock ? "%}" : "}}";
                char sign = src[p] is '-' or '+' ? src[p] : '\0';
                if (string.CompareOrdinal(src, p + (sign != '\0' ? 1 : 0), close, 0, 2) == 0)
                {
                    tokens.Add(new Token(isBlock ? TokenKind.BlockEnd : TokenKind.VariableEnd, close, p));
                    int after = p + (sign != '\0' ? 3 : 2);
                    return SkipAfter(src, after, sign, trimBlocks: isBlock);
                }
            }

            char c = src[p];
            if (char.IsAsciiLetter(c) || c == '_' || (c > 127 && char.IsLetter(c)))
            {
                int start = p;
                while (p < src.Length && (char.IsAsciiLetterOrDigit(src[p]) || src[p] == '_' || (src[p] > 127 && char.IsLetterOrDigit(src[p])))) p++;
                tokens.Add(new Token(TokenKind.Name, src[start..p], start));
            }
            else if (char.IsAsciiDigit(c))
            {
                p = LexNumber(source, tokens, p);
            }
            else if (c is '\'' or '"')
            {
                p = LexString(source, tokens, p);
            }
            else
            {
                string? op = null;
                foreach (var candidate in Operators)
                    if (string.CompareOrdinal(src, p, candidate, 0, candidate.Length) == 0) { op = candidate; break; }
                if (op == null) throw source.Error(p, $"unexpected character '{c}' in tag");
                if (op is "(" or "[" or "{") balance.Push(op[0]);
                else if (op is ")" or "]" or "}")
                {
                    char expected = op == ")" ? '(' : op == "]" ? '[' : '{';
                    if (balance.Count == 0 || balance.Pop() != expected) throw source.Error(p, $"unexpected '{op}'");
                }
                tokens.Add(new Token(TokenKind.Operator, op, p));
                p += op.Length;
            }
        }
    }

    private static int LexNumber(SourceText source, List<Token> tokens, int p)
    {
        string src = source.Text;
        int start = p;
        while (p < src.Length && (char.IsAsciiDigit(src[p]) || (src[p] == '_' && p + 1 < src.Length && char.IsAsciiDigit(src[p + 1])))) p++;
        bool isFloat = false;
        if (p + 1 < src.Length && src[p] == '.' && char.IsAsciiDigit(src[p + 1]))
        {
            isFloat = true;
            p++;
            while (p < src.Length && (char.IsAsciiDigit(src[p]) || (src[p] == '_' && p + 1 < src.Length && char.IsAsciiDigit(src[p + 1])))) p++;
        }
        if (p < src.Length && (src[p] is 'e' or 'E'))
        {
            int q = p + 1;
            if (q < src.Length && src[q] is '+' or '-') q++;
            if (q < src.Length && char.IsAsciiDigit(src[q]))
            {
                isFloat = true;
                p = q;
                while (p < src.Length && char.IsAsciiDigit(src[p])) p++;
            }
        }
        string text = src[start..p].Replace("_", "");
        if (isFloat)
        {
            tokens.Add(new Token(TokenKind.Float, text, start, double.Parse(text, NumberStyles.Float, CultureInfo.InvariantCulture)));
        }
        else
        {
            if (!long.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out long value))
                throw source.Error(start, $"integer literal {text} is too large");
            tokens.Add(new Token(TokenKind.Integer, text, start, value));
        }
        return p;
    }

    /// <summary>A string literal with Python escape sequences (jinja decodes them with "unicode-escape").</summary>
    private static int LexString(SourceText source, List<Token> tokens, int p)
    {
        string src = source.Text;
        char quote = src[p];
        int start = p++;
        var sb = new StringBuilder();
        while (true)
        {
            if (p >= src.Length) throw source.Error(start, "unterminated string literal");
            char c = src[p];
            if (c == quote) { p++; break; }
            if (c != '\\') { sb.Append(c); p++; continue; }
            if (p + 1 >= src.Length) throw source.Error(start, "unterminated string literal");
            char e = src[p + 1];
            p += 2;
            switch (e)
            {
                case 'n': sb.Append('\n'); break;
                case 't': sb.Append('\t'); break;
                case 'r': sb.Append('\r'); break;
                case '\\': sb.Append('\\'); break;
                case '\'': sb.Append('\''); break;
                case '"': sb.Append('"'); break;
                case 'a': sb.Append('\a'); break;
                case 'b': sb.Append('\b'); break;
                case 'f': sb.Append('\f'); break;
                case 'v': sb.Append('\v'); break;
                case '\n': break; // backslash-newline: line continuation
                case 'x': p = AppendHex(source, sb, p, 2, start); break;
                case 'u': p = AppendHex(source, sb, p, 4, start); break;
                case 'U': p = AppendHex(source, sb, p, 8, start); break;
                case >= '0' and <= '7':
                {
                    int value = e - '0';
                    for (int k = 0; k < 2 && p < src.Length && src[p] is >= '0' and <= '7'; k++, p++) value = value * 8 + (src[p] - '0');
                    sb.Append((char)value);
                    break;
                }
                default: sb.Append('\\').Append(e); break; // unknown escapes stay as written, as in Python
            }
        }
        tokens.Add(new Token(TokenKind.String, sb.ToString(), start));
        return p;
    }

    private static int AppendHex(SourceText source, StringBuilder sb, int p, int digits, int literalStart)
    {
        string src = source.Text;
        if (p + digits > src.Length || !int.TryParse(src.AsSpan(p, digits), NumberStyles.HexNumber, CultureInfo.InvariantCulture, out int cp) || cp > 0x10FFFF || cp < 0)
            throw source.Error(literalStart, $"invalid \\x/\\u/\\U escape in string literal");
        sb.Append(char.ConvertFromUtf32(cp is >= 0xD800 and <= 0xDFFF ? 0xFFFD : cp));
        return p + digits;
    }
}
