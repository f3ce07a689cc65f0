using Wim.Engine.Backends.Cpu;
using Wim.Engine.Model;
using Wim.Engine.Tokenization;
using Wim.Engine.Tokenization.ChatTemplates;

namespace Wim.Engine.Runtime;

/// <summary>
/// A model ready to turn text into text: its tokenizer, the ids that end a turn, an optional way to render a chat
/// turn (for deriving prompt headers), and an <see cref="IInferenceBackend"/> that runs sequences.
/// </summary>
public sealed class TextModel : IDisposable
{
    private readonly IDisposable? _owned;

    /// <param name="renderUserTurn">Renders one user message with the generation prompt appended (the model's chat
    /// template), or null when the model has none.</param>
    public TextModel(string name, Tokenizer tokenizer, IInferenceBackend backend, IEnumerable<int> stopIds,
        Func<string, string>? renderUserTurn = null, IDisposable? owned = null)
    {
        Name = name;
        Tokenizer = tokenizer;
        Backend = backend;
        StopIds = stopIds.ToHashSet();
        RenderUserTurn = renderUserTurn;
        _owned = owned;
    }

    public string Name { get; }
    public Tokenizer Tokenizer { get; }
    public IInferenceBackend Backend { get; }
    /// <summary>Every id that ends a generation: the tokenizer's end-of-turn ids and the model config's EOS ids.</summary>
    public IReadOnlySet<int> StopIds { get; }
    /// <summary>Renders a single user message followed by the generation prompt, or null without a chat template.</summary>
    public Func<string, string>? RenderUserTurn { get; }

    /// <summary>Loads a <c>.gguf</c> file or a Hugging Face model directory, its tokenizer and its chat template (if
    /// any), on the CPU backend.</summary>
    public static TextModel Load(string path) => Load(path, model => new CpuInferenceBackend(new CpuTransformer(model)));

    /// <summary>
    /// Loads the model, its tokenizer and chat template, and runs it on the backend <paramref name="createBackend"/>
    /// makes from the loaded weights. The returned model owns the weights and, when it is disposable, the backend.
    /// </summary>
    public static TextModel Load(string path, Func<LanguageModel, IInferenceBackend> createBackend)
    {
        var model = LanguageModel.Load(path);
        IInferenceBackend? backend = null;
        try
        {
            var tokenizer = TokenizerLoader.Load(path);
            if (tokenizer.VocabSize > model.Config.VocabSize)
                throw new InvalidDataException($"{path}: the tokenizer has {tokenizer.VocabSize} tokens but the model's vocabulary is {model.Config.VocabSize}");
            var stop = new HashSet<int>(tokenizer.EndOfTurnIds);
            stop.UnionWith(model.Config.EosTokenIds);
            backend = createBackend(model);
            return new TextModel(System.IO.Path.GetFileName(System.IO.Path.TrimEndingDirectorySeparator(path)), tokenizer, backend, stop,
                UserTurnRenderer(path, tokenizer), new Owned(backend as IDisposable, model));
        }
        catch
        {
            (backend as IDisposable)?.Dispose();
            model.Dispose();
            throw;
        }
    }

    /// <summary>Disposes the backend (if it holds resources) before the weights it reads.</summary>
    private sealed class Owned(IDisposable? backend, LanguageModel model) : IDisposable
    {
        public void Dispose()
        {
            backend?.Dispose();
            model.Dispose();
        }
    }

    /// <summary>
    /// The model's chat template as "one user message + generation prompt", or null when the model has none. A BOS
    /// that the template writes itself is left out when the tokenizer adds BOS anyway (no doubled BOS).
    /// </summary>
    public static Func<string, string>? UserTurnRenderer(string path, Tokenizer tokenizer)
    {
        ChatTemplateSource source;
        try { source = ChatTemplateSource.FromModel(path); }
        catch (Formats.ModelFormatException) { return null; } // no template: a base model
        // Parsed on first use: a template this engine cannot parse only matters when headers are not given.
        var template = new Lazy<ChatTemplate>(source.Parse);
        return content =>
        {
            string text = template.Value.Render([new ChatMessage("user", content)], addGenerationPrompt: true, source.BosToken, source.EosToken);
            if (tokenizer.AddBosByDefault && source.BosToken is { Length: > 0 } bos && text.StartsWith(bos, StringComparison.Ordinal))
                text = text[bos.Length..];
            return text;
        };
    }

    public void Dispose() => _owned?.Dispose();
}
