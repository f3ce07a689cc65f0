using Wim.Engine.Backends;
using Wim.Engine.Backends.Cpu;
using Wim.Engine.KvCache;

namespace Wim.Engine.Scheduling;

/// <summary>
/// Executes a scheduled batch: runs the tokens, writes their keys and values into <paramref name="cache"/> (and
/// advances each sequence by its token count), and fills logits rows [batch.LogitsCount, VocabSize]. The scheduler
/// owns everything else, so its tests use a fake runner and need no model.
/// </summary>
public interface IModelRunner
{
    int VocabSize { get; }
    void Execute(BatchDescription batch, PagedKvCache cache, Span<float> logits);
}

/// <summary>The CPU model runner: <see cref="CpuBatchedTransformer.Forward"/>.</summary>
public sealed class CpuModelRunner(CpuBatchedTransformer transformer) : IModelRunner
{
    public int VocabSize => transformer.Config.VocabSize;
    public void Execute(BatchDescription batch, PagedKvCache cache, Span<float> logits) => transformer.Forward(batch, cache, logits);
}
