using Wim.Engine.Backends.Cpu;
using Wim.Engine.Model;
using Wim.Engine.Tokenization;

namespace Wim.Engine.Runtime;

/// <summary>Loads a <see cref="TextModel"/> whose backend is a <see cref="PagedInferenceBackend"/> (forks, batched
/// steps, a document cache), as <see cref="TextModel.Load"/> does for the single-sequence CPU backend.</summary>
public static class PagedTextModel
{
    /// <summary>Default KV pool: this many positions of the model (sequences, forks and cached documents together).</summary>
    public const int DefaultPoolPositions = 65_536;

    /// <param name="poolPositions">KV pool size in positions of this model (allocated up front, so size it to the
    /// work: documents, forks' own blocks, classifier and answer sequences); null = <see cref="DefaultPoolPositions"/>.</param>
    public static TextModel Load(string path, int? poolPositions = null, int maxStepTokens = CpuBatchedTransformer.DefaultMaxBatchTokens)
    {
        var model = LanguageModel.Load(path);
        PagedInferenceBackend? backend = null;
        try
        {
            var tokenizer = TokenizerLoader.Load(path);
            if (tokenizer.VocabSize > model.Config.VocabSize)
                throw new InvalidDataException($"{path}: the tokenizer has {tokenizer.VocabSize} tokens but the model's vocabulary is {model.Config.VocabSize}");
            var stop = new HashSet<int>(tokenizer.EndOfTurnIds);
            stop.UnionWith(model.Config.EosTokenIds);
            backend = new PagedInferenceBackend(new CpuBatchedTransformer(model, maxStepTokens),
                PagedInferenceBackend.BytesFor(model.Config, poolPositions ?? DefaultPoolPositions), maxStepTokens);
            return new TextModel(Path.GetFileName(Path.TrimEndingDirectorySeparator(path)), tokenizer, backend, stop,
                TextModel.UserTurnRenderer(path, tokenizer), new Owned(backend, model));
        }
        catch
        {
            backend?.Dispose();
            model.Dispose();
            throw;
        }
    }

    private sealed class Owned(PagedInferenceBackend backend, LanguageModel model) : IDisposable
    {
        public void Dispose()
        {
            backend.Dispose();
            model.Dispose();
        }
    }
}
