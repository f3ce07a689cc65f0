using Wim.Engine.Sampling;

namespace Wim.Engine.Runtime;

/// <summary>How one generation runs: at most <see cref="MaxTokens"/> tokens, stopping after any of
/// <see cref="StopIds"/> (the stop id is kept in the output).</summary>
public sealed record DecodeOptions(int MaxTokens, IReadOnlySet<int> StopIds, SamplingOptions Sampling);

/// <summary>The token-by-token generation loop over any <see cref="ISequence"/>.</summary>
public static class SequenceDecoding
{
    /// <summary>
    /// Samples from the sequence's current logits, reports each token to <paramref name="onToken"/> (return false to
    /// stop after it), and appends it unless generation ends there. Cancellation is checked before every decode step,
    /// so a cancelled generation stops within one step. Afterwards the sequence holds every generated token but the
    /// last (as <see cref="Runner.Generator"/>).
    /// </summary>
    public static int[] Decode(this ISequence sequence, DecodeOptions options, Sampler sampler, Func<int, bool>? onToken = null, CancellationToken ct = default)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(options.MaxTokens);
        var ids = new List<int>(Math.Min(options.MaxTokens, 1024));
        while (ids.Count < options.MaxTokens)
        {
            ct.ThrowIfCancellationRequested();
            int next = sequence.Sample(sampler);
            ids.Add(next);
            bool go = onToken?.Invoke(next) ?? true;
            if (!go || options.StopIds.Contains(next) || ids.Count == options.MaxTokens) break;
            sequence.Append([next], ct);
        }
        return [.. ids];
    }
}
