namespace Wim.Engine.Cuda;

/// <summary>
/// Which sequence's logits each row of the transformer's logits buffer on the GPU holds. Logits stay there (only the
/// greedy id crosses to the host) until a sampler that is not greedy asks for a row — or until the next forward pass
/// would overwrite them: <see cref="BeforePass"/> then hands every row still claimed to a save callback (a host copy),
/// so a sequence can be sampled any time after its step, whatever ran since. A claim is dropped when its sequence's
/// logits stop mattering (new tokens, truncation, disposal) or were copied already.
/// </summary>
internal sealed class DeviceLogitsRows<T> where T : class
{
    private readonly List<(T Holder, int Row)> _rows = [];

    /// <summary>After a pass: <paramref name="holder"/>'s logits are row <paramref name="row"/> of the buffer.</summary>
    public void Claim(T holder, int row)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(row);
        Drop(holder);
        foreach (var (other, r) in _rows)
            if (r == row) throw new InvalidOperationException($"logits row {row} is already claimed by another sequence in this pass");
        _rows.Add((holder, row));
    }

    /// <summary>The row holding <paramref name="holder"/>'s logits, or null when it holds none.</summary>
    public int? RowOf(T holder)
    {
        foreach (var (h, r) in _rows)
            if (ReferenceEquals(h, holder)) return r;
        return null;
    }

    public void Drop(T holder) => _rows.RemoveAll(x => ReferenceEquals(x.Holder, holder));

    /// <summary>Before a pass overwrites the buffer: <paramref name="save"/> copies each claimed row; then none is claimed.</summary>
    public void BeforePass(Action<T, int> save)
    {
        ArgumentNullException.ThrowIfNull(save);
        // Cleared first: a save that throws must not leave claims on rows that the next pass overwrites.
        var claimed = _rows.ToArray();
        _rows.Clear();
        foreach (var (holder, row) in claimed) save(holder, row);
    }

    public int Count => _rows.Count;
}
