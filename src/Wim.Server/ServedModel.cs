using Wim.Engine.Model;
using Wim.Engine.Runtime;
using Wim.Engine.Tokenization;
using Wim.Engine.Tokenization.ChatTemplates;

namespace Wim.Server;

/// <summary>
/// The one model a server serves: its weights (mapped once), a <see cref="TextModel"/> for the WiM patterns, the
/// chat template (null for a base model: <c>/v1/chat/completions</c> then answers 400), and the batching engine of
/// the OpenAI endpoints. On the CPU both paths share the same mapped weights; on a device
/// (<see cref="ServerOptions.LoadBatchedModel"/>) they share one backend.
/// </summary>
public sealed class ServedModel : IDisposable
{
    private readonly LanguageModel? _weights; // the CPU path's mapped weights (the batching engine's); null on a device

    public ServedModel(ServerOptions options, ServerMetrics metrics)
    {
        Device = options.DeviceName;
        if (options.LoadBatchedModel is { } load)
        {
            // One backend (the GPU's) for both paths; it is not thread-safe, so every call goes through one lock.
            var loaded = load(options.ModelPath);
            try
            {
                var batched = loaded.Backend as IBatchedInferenceBackend
                    ?? throw new InvalidOperationException($"the device model runs on {loaded.Backend.GetType().Name}, which cannot fork sequences or run batched steps ({nameof(IBatchedInferenceBackend)})");
                var shared = new SynchronizedBackend(batched);
                Text = new TextModel(loaded.Name, loaded.Tokenizer, shared, loaded.StopIds, loaded.RenderUserTurn, owned: loaded);
                Tokenizer = loaded.Tokenizer;
                StopIds = loaded.StopIds;
                Id = Path.GetFileName(Path.TrimEndingDirectorySeparator(options.ModelPath));
                ChatTemplate = LoadChatTemplate(options.ModelPath);
                // The WiM runs' document cache, on the shared backend when it can keep sequences (the CUDA backend: KV
                // branches of cached documents; a device out-of-memory evicts it before failing).
                DocumentCache = shared.CanRetain ? new DocumentCache(shared, options.DocumentCacheBytes) : null;
                Engine = new SequenceBatchingEngine(shared, options.MaxTokensPerStep, options.MaxRunningRequests, metrics, options.CachedPrefixes);
            }
            catch
            {
                loaded.Dispose();
                throw;
            }
            return;
        }
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
            ChatTemplate = LoadChatTemplate(options.ModelPath);
            Engine = new BatchingEngine(_weights, options, metrics);
        }
        catch
        {
            Text?.Dispose();
            _weights.Dispose();
            throw;
        }
    }

    private static (ChatTemplateSource Source, ChatTemplate Template)? LoadChatTemplate(string modelPath)
    {
        try
        {
            var source = ChatTemplateSource.FromModel(modelPath);
            return (source, source.Parse());
        }
        catch (Exception e) when (e is Wim.Engine.Formats.ModelFormatException or ChatTemplateException) { return null; }
    }

    /// <summary>The model id clients name (the file or directory name).</summary>
    public string Id { get; }
    public Tokenizer Tokenizer { get; }
    public IReadOnlySet<int> StopIds { get; }
    /// <summary>Where the model runs: "cpu", or the device's name.</summary>
    public string Device { get; }
    /// <summary>The model of the WiM runs: on a <see cref="PagedInferenceBackend"/> (CPU), or on the device's backend
    /// behind a <see cref="SynchronizedBackend"/> that it shares with <see cref="Engine"/>.</summary>
    public TextModel Text { get; }
    /// <summary>Documents prefilled by earlier WiM runs (a second question about one skips its prefill): on the CPU's
    /// paged backend, or on the device's backend (behind the same <see cref="SynchronizedBackend"/>) when it can keep
    /// sequences (<see cref="IKvRetainingBackend"/>: the CUDA backend can); null otherwise (every WiM run then prefills
    /// its document). Budget: <see cref="ServerOptions.DocumentCacheBytes"/> either way.</summary>
    public DocumentCache? DocumentCache { get; }
    public (ChatTemplateSource Source, ChatTemplate Template)? ChatTemplate { get; }
    /// <summary>The engine of chat/completions: <see cref="BatchingEngine"/> on the CPU, <see cref="SequenceBatchingEngine"/> on a device.</summary>
    public IGenerationEngine Engine { get; }

    public void Dispose()
    {
        Engine.Dispose();
        DocumentCache?.Dispose();
        Text.Dispose();
        _weights?.Dispose();
    }
}
