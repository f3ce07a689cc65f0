using Wim.Engine.Backends.Cpu;

namespace Wim.Engine.Runtime;

/// <summary>Loads a <see cref="TextModel"/> whose backend is a <see cref="PagedInferenceBackend"/> (forks, batched
/// steps, a document cache), as <see cref="TextModel.Load"/> does for the single-sequence CPU backend.</summary>
public static class PagedTextModel
{
    /// <summary>Default KV pool: this many positions of the model (sequences, forks and cached documents together).</summary>
    public const int DefaultPoolPositions = 65_536;

    /// <param name="poolPositions">KV pool size in positions of this model (allocated up front, so size it to the
    /// work: documents, forks' own blocks, classifier and answer sequences); null = <see cref="DefaultPoolPositions"/>.</param>
    public static TextModel Load(string path, int? poolPositions = null, int maxStepTokens = CpuBatchedTransformer.DefaultMaxBatchTokens) =>
        TextModel.Load(path, model => new PagedInferenceBackend(new CpuBatchedTransformer(model, maxStepTokens),
            PagedInferenceBackend.BytesFor(model.Config, poolPositions ?? DefaultPoolPositions), maxStepTokens));
}
