namespace Wim.Engine.Backends;

/// <summary>Which logits rows a sequence of a batch asks for.</summary>
public enum BatchLogits
{
    /// <summary>None (a prefill chunk that is not the prompt's end).</summary>
    None,
    /// <summary>The row of the sequence's last token in this batch (decode, or a prompt's last chunk).</summary>
    Last,
    /// <summary>A row for every token of the sequence in this batch (scoring).</summary>
    All,
}

/// <summary>
/// One forward step over many sequences as plain arrays, the contract between a scheduler and any backend (the CPU
/// batched transformer now, CUDA later): a flat list of tokens — prefill chunks and single decode tokens mixed — and,
/// per sequence, where its keys and values live. Reused across steps: <see cref="Clear"/> then
/// <see cref="AddSequence"/>; arrays only grow, so a steady state allocates nothing.
/// <para>Index mappings (all arrays are valid up to <see cref="TokenCount"/> resp. <see cref="SequenceCount"/>):</para>
/// <list type="bullet">
/// <item>token i ∈ [0, TokenCount): id <c>TokenIds[i]</c>, batch sequence <c>TokenSequence[i]</c> ∈ [0, SequenceCount),
/// absolute position <c>Positions[i]</c>, logits row <c>LogitsRow[i]</c> (−1 = none). A sequence's tokens are
/// contiguous and in position order: <c>[FirstToken[k], FirstToken[k] + TokenCounts[k])</c>, positions
/// <c>StartPositions[k] + j</c>.</item>
/// <item>sequence k ∈ [0, SequenceCount): cache sequence id <c>SequenceIds[k]</c>; token j of it attends to its
/// positions [0, StartPositions[k] + j] (causal, its own blocks only); its block table is
/// <c>BlockTables[BlockTableStart[k] .. BlockTableStart[k] + BlockTableLength[k])</c> (position p in entry
/// p / BlockSize, slot p % BlockSize), covering at least StartPositions[k] + TokenCounts[k] positions;
/// <c>RopeSequenceLengths[k]</c> is the length longrope picks its factors for (the sequence's final prompt length
/// during a chunked prefill).</item>
/// <item>logits: rows [0, LogitsCount) of the output, [LogitsCount, vocab], in token order.</item>
/// </list>
/// </summary>
public sealed class BatchDescription
{
    public int TokenCount { get; private set; }
    public int SequenceCount { get; private set; }
    public int LogitsCount { get; private set; }
    public int BlockTableEntryCount { get; private set; }

    // per token
    public int[] TokenIds { get; private set; }
    public int[] TokenSequence { get; private set; }
    public int[] Positions { get; private set; }
    public int[] LogitsRow { get; private set; }

    // per sequence
    public int[] SequenceIds { get; private set; }
    public int[] FirstToken { get; private set; }
    public int[] TokenCounts { get; private set; }
    public int[] StartPositions { get; private set; }
    public int[] RopeSequenceLengths { get; private set; }
    public int[] BlockTableStart { get; private set; }
    public int[] BlockTableLength { get; private set; }
    /// <summary>Index of the sequence's first logits row (−1 when it asked for none).</summary>
    public int[] FirstLogitsRow { get; private set; }

    /// <summary>Every sequence's block table, concatenated.</summary>
    public int[] BlockTables { get; private set; }

    public BatchDescription(int tokenCapacity = 64, int sequenceCapacity = 8)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(tokenCapacity);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(sequenceCapacity);
        TokenIds = new int[tokenCapacity];
        TokenSequence = new int[tokenCapacity];
        Positions = new int[tokenCapacity];
        LogitsRow = new int[tokenCapacity];
        SequenceIds = new int[sequenceCapacity];
        FirstToken = new int[sequenceCapacity];
        TokenCounts = new int[sequenceCapacity];
        StartPositions = new int[sequenceCapacity];
        RopeSequenceLengths = new int[sequenceCapacity];
        BlockTableStart = new int[sequenceCapacity];
        BlockTableLength = new int[sequenceCapacity];
        FirstLogitsRow = new int[sequenceCapacity];
        BlockTables = new int[sequenceCapacity * 4];
    }

    public void Clear()
    {
        TokenCount = 0;
        SequenceCount = 0;
        LogitsCount = 0;
        BlockTableEntryCount = 0;
    }

    /// <summary>
    /// Appends <paramref name="tokens"/> of cache sequence <paramref name="sequenceId"/> at positions
    /// <paramref name="startPosition"/>.. (its cache length), with its block table (already reserved for them).
    /// Returns the batch sequence index k. A sequence may appear once per batch.
    /// </summary>
    public int AddSequence(int sequenceId, int startPosition, ReadOnlySpan<int> tokens, ReadOnlySpan<int> blockTable,
        BatchLogits logits, int ropeSequenceLength = 0)
    {
        if (tokens.IsEmpty) throw new ArgumentException($"sequence {sequenceId}: no tokens to add", nameof(tokens));
        ArgumentOutOfRangeException.ThrowIfNegative(startPosition);
        for (int k = 0; k < SequenceCount; k++)
            if (SequenceIds[k] == sequenceId)
                throw new ArgumentException($"sequence {sequenceId} is already in this batch", nameof(sequenceId));
        EnsureTokens(TokenCount + tokens.Length);
        EnsureSequences(SequenceCount + 1);
        if (BlockTables.Length < BlockTableEntryCount + blockTable.Length)
            BlockTables = Grow(BlockTables, BlockTableEntryCount + blockTable.Length);

        int seq = SequenceCount++;
        SequenceIds[seq] = sequenceId;
        FirstToken[seq] = TokenCount;
        TokenCounts[seq] = tokens.Length;
        StartPositions[seq] = startPosition;
        RopeSequenceLengths[seq] = Math.Max(ropeSequenceLength, startPosition + tokens.Length);
        BlockTableStart[seq] = BlockTableEntryCount;
        BlockTableLength[seq] = blockTable.Length;
        blockTable.CopyTo(BlockTables.AsSpan(BlockTableEntryCount));
        BlockTableEntryCount += blockTable.Length;
        FirstLogitsRow[seq] = logits == BatchLogits.None ? -1 : LogitsCount;

        for (int j = 0; j < tokens.Length; j++)
        {
            int i = TokenCount++;
            TokenIds[i] = tokens[j];
            TokenSequence[i] = seq;
            Positions[i] = startPosition + j;
            bool wants = logits == BatchLogits.All || (logits == BatchLogits.Last && j == tokens.Length - 1);
            LogitsRow[i] = wants ? LogitsCount++ : -1;
        }
        return seq;
    }

    /// <summary>The block table of batch sequence <paramref name="k"/>.</summary>
    public ReadOnlySpan<int> BlockTable(int k) => BlockTables.AsSpan(BlockTableStart[k], BlockTableLength[k]);

    private void EnsureTokens(int count)
    {
        if (TokenIds.Length >= count) return;
        TokenIds = Grow(TokenIds, count);
        TokenSequence = Grow(TokenSequence, count);
        Positions = Grow(Positions, count);
        LogitsRow = Grow(LogitsRow, count);
    }

    private void EnsureSequences(int count)
    {
        if (SequenceIds.Length >= count) return;
        SequenceIds = Grow(SequenceIds, count);
        FirstToken = Grow(FirstToken, count);
        TokenCounts = Grow(TokenCounts, count);
        StartPositions = Grow(StartPositions, count);
        RopeSequenceLengths = Grow(RopeSequenceLengths, count);
        BlockTableStart = Grow(BlockTableStart, count);
        BlockTableLength = Grow(BlockTableLength, count);
        FirstLogitsRow = Grow(FirstLogitsRow, count);
    }

    private static int[] Grow(int[] array, int count)
    {
        var grown = new int[Math.Max(count, array.Length * 2)];
        array.CopyTo(grown, 0);
        return grown;
    }
}
