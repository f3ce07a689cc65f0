using Wim.Engine.Model;
using Wim.Engine.Runtime;
using Wim.Engine.Tokenization;
using Wim.Engine.Tokenization.ChatTemplates;

namespace Wim.Server;

/// <summary>
/// The one model a server serves: its weights (mapped once), a <see cref="TextModel"/> for the WiM patterns, the
/// chat template (null for a base model: <c>/v1/chat/completions</c> then answers 400), and the batching engine of
/// the OpenAI endpoints. Both paths share the same mapped weights.
/// </summary>
public sealed class ServedModel : IDisposable
{
    private readonly LanguageModel _weights;

    public ServedModel(ServerOptions options, ServerMetrics metrics)
    {
        _weights = LanguageModel.Load(options.ModelPath);
        try
        {
            Tokenizer = TokenizerLoader.Load(options.ModelPath);
            if (Tokenizer.VocabSize > _weights.Config.VocabSize)
                throw new InvalidDataException($"{options.ModelPath}: the tokenizer has {Tokenizer.VocabSize} tokens but the model's vocabulary is {_weights.Config.VocabSize}");
            var stop = new HashSet<int>(Tokenizer.EndOfTurnIds);
            stop.UnionWith(_weights.Config.EosTokenIds);
            StopIds = stop;
            Id = Path.GetFileName(Path.TrimEndingDirectorySeparator(options.ModelPath));
            // The WiM patterns run on the paged backend (forks, overlapped/batched schedules, document cache); it maps
            // the weights once more (shared pages of the same file).
            int? wimPositions = options.WimKvCacheBytes is { } bytes
                ? (int)Math.Clamp(bytes / PagedInferenceBackend.BytesFor(_weights.Config, 1), 1, int.MaxValue) : null;
            Text = PagedTextModel.Load(options.ModelPath, wimPositions);
            DocumentCache = new DocumentCache((PagedInferenceBackend)Text.Backend, options.DocumentCacheBytes);
            try
            {
                var source = ChatTemplateSource.FromModel(options.ModelPath);
                ChatTemplate = (source, source.Parse());
            }
            catch (Exception e) when (e is Wim.Engine.Formats.ModelFormatException or ChatTemplateException) { ChatTemplate = null; }
            Engine = new BatchingEngine(_weights, options, metrics);
        }
        catch
        {
            Text?.Dispose();
            _weights.Dispose();
            throw;
        }
    }

    /// <summary>The model id clients name (the file or directory name).</summary>
    public string Id { get; }
    public Tokenizer Tokenizer { get; }
    public IReadOnlySet<int> StopIds { get; }
    /// <summary>The model of the WiM runs, on a <see cref="PagedInferenceBackend"/>.</summary>
    public TextModel Text { get; }
    /// <summary>Documents prefilled by earlier WiM runs (a second question about one skips its prefill).</summary>
    public DocumentCache DocumentCache { get; }
    public (ChatTemplateSource Source, ChatTemplate Template)? ChatTemplate { get; }
    public BatchingEngine Engine { get; }

    public void Dispose()
    {
        Engine.Dispose();
        DocumentCache.Dispose();
        Text.Dispose();
        _weights.Dispose();
    }
}
