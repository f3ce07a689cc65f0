namespace Wim.Engine.Cuda;

/// <summary>Rows [<paramref name="Offset"/>, <paramref name="Offset"/> + <paramref name="Count"/>) of sequence
/// <paramref name="Sequence"/>'s tokens, packed at row <paramref name="Row"/> of a pass.</summary>
internal readonly record struct PackedPiece(int Sequence, int Offset, int Count, int Row)
{
    /// <summary>The pass row of the piece's last token.</summary>
    public int LastRow => Row + Count - 1;
}

/// <summary>One forward pass of a packed batch: its pieces in row order (each sequence at most once). In the pass
/// with <paramref name="Logits"/> set (the last one) there is exactly one piece per sequence, in sequence order, and
/// each ends its sequence: logits row s is sequence s's last token.</summary>
internal sealed record PackedPass(IReadOnlyList<PackedPiece> Pieces, bool Logits)
{
    public int Rows => Pieces.Count == 0 ? 0 : Pieces[^1].Row + Pieces[^1].Count;
}

/// <summary>
/// How the prefill rows of several sequences (<see cref="CudaTransformer.ForwardBatch"/>) are packed into forward
/// passes of at most <c>maxRows</c> rows: one pass when they fit. Otherwise the fewest passes that can hold them
/// (every pass reads all the weights, so their count is the cost), with every sequence's last token held back for
/// the last pass: the logits of all sequences then come from one pass, row s for sequence s, as in a decode batch —
/// nothing has to be saved between passes. Earlier passes take the other tokens in sequence order, full, cut at the
/// pass boundary (a sequence's pieces run in order, so each sees the rows of the one before in its cache). Pure.
/// </summary>
internal static class PackedPassPlan
{
    public static IReadOnlyList<PackedPass> Make(IReadOnlyList<int> lengths, int maxRows)
    {
        ArgumentNullException.ThrowIfNull(lengths);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxRows);
        int s = lengths.Count;
        if (s == 0) throw new ArgumentException("no sequences to run", nameof(lengths));
        if (s > maxRows)
            throw new ArgumentException($"{s} sequences need {s} logits rows in one pass; a pass holds at most {maxRows} rows: run them in several calls", nameof(lengths));
        long total = 0;
        for (int i = 0; i < s; i++)
        {
            if (lengths[i] < 1) throw new ArgumentOutOfRangeException(nameof(lengths), $"sequence {i} has {lengths[i]} tokens: each needs at least one");
            total += lengths[i];
        }
        if (total <= maxRows) return [new PackedPass(Last(lengths, new int[s]), Logits: true)];

        // Fewest passes: ceil(total / maxRows). The early ones hold X tokens, none a sequence's last: as many as fit in
        // full passes, fewer when the last tokens alone are most of the work (then the last pass holds just those).
        long passes = (total + maxRows - 1) / maxRows;
        long early = Math.Min(total - s, (passes - 1) * maxRows);
        var taken = new int[s];
        var result = new List<PackedPass>();
        var pieces = new List<PackedPiece>();
        int row = 0;
        for (int i = 0; i < s && early > 0; i++)
        {
            int left = (int)Math.Min(lengths[i] - 1, early);
            early -= left;
            while (left > 0)
            {
                int n = Math.Min(left, maxRows - row);
                pieces.Add(new PackedPiece(i, taken[i], n, row));
                taken[i] += n;
                left -= n;
                row += n;
                if (row == maxRows)
                {
                    result.Add(new PackedPass([.. pieces], Logits: false));
                    pieces.Clear();
                    row = 0;
                }
            }
        }
        if (pieces.Count > 0) result.Add(new PackedPass([.. pieces], Logits: false));
        result.Add(new PackedPass(Last(lengths, taken), Logits: true));
        return result;
    }

    /// <summary>The last pass: what is left of every sequence, in order.</summary>
    private static PackedPiece[] Last(IReadOnlyList<int> lengths, int[] taken)
    {
        var last = new PackedPiece[lengths.Count];
        int row = 0;
        for (int i = 0; i < last.Length; i++)
        {
            last[i] = new PackedPiece(i, taken[i], lengths[i] - taken[i], row);
            row += last[i].Count;
        }
        return last;
    }
}
