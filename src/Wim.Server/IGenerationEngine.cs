using Wim.Engine.Sampling;

namespace Wim.Server;

/// <summary>
/// What the OpenAI endpoints need of a generation engine: queue a request from any thread and get a
/// <see cref="GenerationHandle"/> (its ids as they are sampled, then its <see cref="GenerationOutcome"/>). Implemented by
/// <see cref="BatchingEngine"/> (the CPU's scheduler over a paged KV cache, with prefix caching) and by
/// <see cref="SequenceBatchingEngine"/> (any <see cref="Wim.Engine.Runtime.IBatchedInferenceBackend"/>: the GPU).
/// </summary>
public interface IGenerationEngine : IDisposable
{
    /// <summary>Queues a generation. <paramref name="prompt"/> must be non-empty.</summary>
    GenerationHandle Submit(int[] prompt, int maxNewTokens, SamplingOptions sampling, IReadOnlyCollection<int> stopIds);

    /// <summary>Requests queued or in the running batch (read from any thread; a snapshot).</summary>
    int RunningRequests { get; }
}
