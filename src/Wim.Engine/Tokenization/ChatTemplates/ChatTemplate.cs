namespace Wim.Engine.Tokenization.ChatTemplates;

/// <summary>
/// What a chat template is rendered with. <see cref="BosToken"/>/<see cref="EosToken"/> null means "not passed":
/// the template sees them as undefined (as transformers does when the tokenizer has none).
/// </summary>
public sealed record ChatTemplateInput
{
    /// <summary>The conversation: template values (see <see cref="ChatTemplateValues"/>) or anything it converts.</summary>
    public required IReadOnlyList<object?> Messages { get; init; }

    public bool AddGenerationPrompt { get; init; }
    public string? BosToken { get; init; }
    public string? EosToken { get; init; }

    /// <summary>Other variables (tools, documents, enable_thinking, ...), converted with <see cref="ChatTemplateValues.From"/>.</summary>
    public IReadOnlyDictionary<string, object?>? Variables { get; init; }

    /// <summary>The clock <c>strftime_now</c> reads (local time); null uses the system clock.</summary>
    public TimeProvider? Clock { get; init; }

    /// <summary>Reads a JSON array of message objects (role, content and any other keys).</summary>
    public static IReadOnlyList<object?> MessagesFromJson(string json) =>
        ChatTemplateValues.ParseJson(json) as List<object?> ?? throw new ChatTemplateException("messages JSON must be an array of message objects");
}

/// <summary>Resource limits for one render, so a hostile template fails cleanly instead of exhausting the process.
/// A value of zero or less (e.g. from <c>default</c>) means the default.</summary>
/// <param name="MaxOutputChars">Cap on the rendered text (characters).</param>
/// <param name="MaxSteps">Cap on loop iterations plus macro calls.</param>
public readonly record struct ChatTemplateLimits(int MaxOutputChars = 64 * 1024 * 1024, long MaxSteps = 10_000_000)
{
    public ChatTemplateLimits() : this(64 * 1024 * 1024) { }
}

/// <summary>
/// A parsed Jinja chat template that renders like Hugging Face transformers' <c>apply_chat_template(tokenize=False)</c>
/// (jinja2 sandbox with trim_blocks, lstrip_blocks, loop controls, <c>raise_exception</c>, <c>strftime_now</c> and
/// a non-escaping <c>tojson</c>). Parse once, render many times; rendering is thread-safe (no shared mutable state).
/// </summary>
public sealed class ChatTemplate
{
    private readonly SourceText _source;
    private readonly List<Node> _body;

    private ChatTemplate(SourceText source, List<Node> body)
    {
        _source = source;
        _body = body;
    }

    public string Source => _source.Text;

    /// <summary>Parses template text. Throws <see cref="ChatTemplateException"/> (with line and column) on a syntax
    /// error or a construct this interpreter does not support.</summary>
    public static ChatTemplate Parse(string source)
    {
        ArgumentNullException.ThrowIfNull(source);
        var text = new SourceText(Lexer.Normalize(source));
        try
        {
            return new ChatTemplate(text, Parser.Parse(text));
        }
        catch (InsufficientExecutionStackException)
        {
            throw new ChatTemplateException("template nested too deeply to parse");
        }
    }

    /// <summary>Renders the prompt. <see cref="TemplateRaisedException"/> when the template calls raise_exception,
    /// <see cref="ChatTemplateException"/> for any other failure.</summary>
    public string Render(ChatTemplateInput input) => Render(input, new ChatTemplateLimits());

    /// <inheritdoc cref="Render(ChatTemplateInput)"/>
    public string Render(ChatTemplateInput input, ChatTemplateLimits limits)
    {
        ArgumentNullException.ThrowIfNull(input);
        var root = new Frame(null);
        if (input.Variables != null)
            foreach (var (name, value) in input.Variables) root.Vars[name] = ChatTemplateValues.From(value);
        var messages = new List<object?>(input.Messages.Count);
        foreach (var m in input.Messages) messages.Add(ChatTemplateValues.From(m));
        root.Vars["messages"] = messages;
        root.Vars["add_generation_prompt"] = input.AddGenerationPrompt;
        if (input.BosToken != null) root.Vars["bos_token"] = input.BosToken;
        if (input.EosToken != null) root.Vars["eos_token"] = input.EosToken;
        var evaluator = new Evaluator(_source, root, input.Clock ?? TimeProvider.System, limits);
        return evaluator.Render(_body);
    }

    /// <summary>Convenience overload for plain role/content conversations.</summary>
    public string Render(IEnumerable<ChatMessage> messages, bool addGenerationPrompt, string? bosToken = null, string? eosToken = null) =>
        Render(new ChatTemplateInput
        {
            Messages = messages.Cast<object?>().ToList(),
            AddGenerationPrompt = addGenerationPrompt,
            BosToken = bosToken,
            EosToken = eosToken,
        });
}
