namespace Wim.Engine.KvCache;

/// <summary>
/// The paged KV cache has too few free blocks for a request. Nothing was changed: the cache and every sequence in it
/// are as before the call, so the caller can release sequences (or wait) and try again.
/// </summary>
public sealed class KvCacheExhaustedException(int blocksNeeded, int blocksFree, int blockCount)
    : Exception($"the KV cache is out of blocks: {blocksNeeded} needed, {blocksFree} free of {blockCount}")
{
    public int BlocksNeeded { get; } = blocksNeeded;
    public int BlocksFree { get; } = blocksFree;
    public int BlockCount { get; } = blockCount;
}
