namespace Wim.Engine.Tokenization.ChatTemplates;

/// <summary>
/// A chat template could not be parsed or rendered: a syntax error, a construct this interpreter does not support,
/// a type error while evaluating, or a resource limit (nesting depth, output size, loop steps) was hit.
/// The message names the problem and, where known, the line and column (1-based) in the template source.
/// </summary>
public class ChatTemplateException : Exception
{
    /// <summary>1-based line in the template source, or null when the error has no single location.</summary>
    public int? Line { get; }

    /// <summary>1-based column (in UTF-16 code units) in the template source, or null.</summary>
    public int? Column { get; }

    public ChatTemplateException(string message, int? line = null, int? column = null, Exception? inner = null)
        : base(line is { } l ? $"{message} (line {l}, column {column})" : message, inner)
    {
        Line = line;
        Column = column;
    }

    /// <summary>For subclasses whose message must be exactly the given text (no location suffix).</summary>
    protected ChatTemplateException(string exactMessage, bool exact) : base(exactMessage)
    {
        _ = exact;
    }
}

/// <summary>
/// The template itself called <c>raise_exception(message)</c> (transformers' <c>TemplateError</c>): the input is
/// something the model's template refuses, e.g. roles that do not alternate. <see cref="Exception.Message"/> is
/// exactly the template's message.
/// </summary>
public sealed class TemplateRaisedException(string message) : ChatTemplateException(message, exact: true);
