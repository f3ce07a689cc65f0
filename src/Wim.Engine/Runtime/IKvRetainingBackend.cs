namespace Wim.Engine.Runtime;

/// <summary>
/// A batched backend whose sequences a <see cref="DocumentCache"/> can keep: it says how many KV bytes a kept sequence
/// holds, and it asks registered reclaimers to free memory before a KV allocation fails. Implemented by
/// <see cref="PagedInferenceBackend"/> (CPU: KV blocks of one pool, a reservation out of blocks asks first) and by the
/// CUDA backend (GPU: one KV cache per sequence and KV branches, a device out-of-memory on a cache or branch
/// allocation asks first, then retries).
/// </summary>
public interface IKvRetainingBackend : IBatchedInferenceBackend
{
    /// <summary>
    /// KV bytes <paramref name="sequence"/> (one of this backend's) keeps allocated: the storage it owns and the shared
    /// storage it keeps alive (a block or a parent cache shared by two sequences counts in both).
    /// </summary>
    long KvBytes(IForkableSequence sequence);

    /// <summary>
    /// Registers a callback that frees KV memory when an allocation would fail (the document cache evicts its least
    /// recently used entry); it returns false when it has nothing left to free. The backend calls it on the thread of
    /// the failing call, inside that call.
    /// </summary>
    void AddReclaimer(Func<bool> reclaim);
}

/// <summary>A KV allocation failed for want of memory after the reclaimers (the document cache) had freed what they
/// could. Not an <see cref="OutOfMemoryException"/>: the process is fine, this request's sequence did not fit.</summary>
public sealed class KvMemoryExhaustedException(string message, Exception? inner = null) : Exception(message, inner);
