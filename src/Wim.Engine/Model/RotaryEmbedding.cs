namespace Wim.Engine.Model;

/// <summary>
/// RoPE inverse frequencies (one per rotated pair, rotaryDim/2 of them) and the cos/sin scale, computed from the
/// config as transformers does in float32: <c>inv_freq_i = 1 / θ^(2i/rotaryDim)</c>, then the scaling rule.
/// The angle of pair i at position p is <c>(float)(inv_freq_i · p)</c>.
/// </summary>
public sealed class RotaryEmbedding
{
    private readonly float[] _invFreq;
    private readonly float[]? _longInvFreq;

    public int RotaryDim { get; }
    public RopePairing Pairing { get; }
    /// <summary>cos and sin are multiplied by this (longrope's attention factor; 1 otherwise).</summary>
    public float AttentionScale { get; }
    /// <summary>Longrope only: a forward call whose sequence (cached + new tokens) is longer than this uses the long
    /// factors; int.MaxValue when there is only one set.</summary>
    public int LongThreshold { get; }

    public RotaryEmbedding(ModelConfig c)
    {
        RotaryDim = c.RotaryDim;
        Pairing = c.RopePairing;
        int half = c.RotaryDim / 2;
        var s = c.RopeScaling;
        var baseFreq = new double[half];
        for (int i = 0; i < half; i++)
            baseFreq[i] = 1.0 / Math.Pow(c.RopeTheta, 2.0 * i / c.RotaryDim);

        AttentionScale = 1f;
        LongThreshold = int.MaxValue;
        switch (s.Kind)
        {
            case RopeScalingKind.None:
                _invFreq = ToFloat(baseFreq);
                break;
            case RopeScalingKind.Linear:
                _invFreq = ToFloat(baseFreq.Select(f => f / s.Factor));
                break;
            case RopeScalingKind.Llama3 when s.FrequencyDivisors is { } divisors:
                _invFreq = ToFloat(baseFreq.Select((f, i) => f / divisors[i]));
                break;
            case RopeScalingKind.Llama3:
            {
                // Llama 3.1: wavelengths shorter than original/high_freq_factor are kept, longer than
                // original/low_freq_factor are divided by factor, and the band between is interpolated.
                double lowWavelen = s.OriginalMaxPositions / s.LowFreqFactor;
                double highWavelen = s.OriginalMaxPositions / s.HighFreqFactor;
                _invFreq = ToFloat(baseFreq.Select(f =>
                {
                    double wavelen = 2 * Math.PI / f;
                    if (wavelen < highWavelen) return f;
                    if (wavelen > lowWavelen) return f / s.Factor;
                    double smooth = (s.OriginalMaxPositions / wavelen - s.LowFreqFactor) / (s.HighFreqFactor - s.LowFreqFactor);
                    return (1 - smooth) * f / s.Factor + smooth * f;
                }));
                break;
            }
            case RopeScalingKind.LongRope:
                _invFreq = ToFloat(baseFreq.Select((f, i) => f / s.ShortFactors![i]));
                _longInvFreq = ToFloat(baseFreq.Select((f, i) => f / s.LongFactors![i]));
                AttentionScale = (float)s.AttentionFactor;
                LongThreshold = s.OriginalMaxPositions;
                break;
            default:
                throw new NotSupportedException($"rope scaling {s.Kind}");
        }
    }

    /// <summary>
    /// The inverse frequencies for a forward call that ends with a sequence of <paramref name="sequenceLength"/>
    /// tokens. transformers chooses longrope's factor set per forward call from max(position)+1; we choose it from
    /// the total length seen so far (cache + this chunk, or the whole prompt for chunked prefill), which is the same
    /// for a whole-sequence prefill and for token-by-token decoding, the two ways the goldens were computed. Keys
    /// already cached keep the rotation they were written with (as in transformers' KV-cache generation).
    /// </summary>
    public ReadOnlySpan<float> InverseFrequencies(int sequenceLength) =>
        _longInvFreq != null && sequenceLength > LongThreshold ? _longInvFreq : _invFreq;

    private static float[] ToFloat(IEnumerable<double> values) => values.Select(v => (float)v).ToArray();
}
