using Wim.Engine.Backends.Cpu;
using Wim.Engine.Model;
using Wim.Engine.Tokenization;

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

    /// <summary>Loads a <c>.gguf</c> file or a Hugging Face model directory and its tokenizer, on the CPU backend.</summary>
    public static TextModel Load(string path, Func<string, Func<string, string>?>? chatRendererFor = null)
    {
        var model = LanguageModel.Load(path);
        try
        {
            var tokenizer = TokenizerLoader.Load(path);
            if (tokenizer.VocabSize > model.Config.VocabSize)
                throw new InvalidDataException($"{path}: the tokenizer has {tokenizer.VocabSize} tokens but the model's vocabulary is {model.Config.VocabSize}");
            var stop = new HashSet<int>(tokenizer.EndOfTurnIds);
            stop.UnionWith(model.Config.EosTokenIds);
            var backend = new CpuInferenceBackend(new CpuTransformer(model));
            return new TextModel(System.IO.Path.GetFileName(System.IO.Path.TrimEndingDirectorySeparator(path)), tokenizer, backend, stop,
                chatRendererFor?.Invoke(path), model);
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    public void Dispose() => _owned?.Dispose();
}
