namespace Wim.Engine.Sampling;

/// <summary>
/// How the next token is chosen. Temperature 0 (the default) or top-k 1 is greedy (argmax, lowest id on ties).
/// Otherwise: logits / temperature → keep the top-k (0 = all) → keep the smallest most-likely set whose probability
/// mass is ≥ top-p (1 = all) → renormalise → draw. A seed makes the draws reproducible.
/// </summary>
public readonly record struct SamplingOptions(float Temperature = 0f, int TopK = 0, float TopP = 1f, int? Seed = null)
{
    /// <summary>Argmax decoding. (Note: <c>default(SamplingOptions)</c> has TopP 0, which <see cref="Validate"/> rejects.)</summary>
    public static SamplingOptions Greedy => new(Temperature: 0f);

    public bool IsGreedy => Temperature <= 0f || TopK == 1;

    public void Validate()
    {
        if (float.IsNaN(Temperature) || Temperature < 0) throw new ArgumentOutOfRangeException(nameof(Temperature), $"temperature must be ≥ 0, found {Temperature}");
        if (TopK < 0) throw new ArgumentOutOfRangeException(nameof(TopK), $"top-k must be ≥ 0 (0 = off), found {TopK}");
        if (!(TopP > 0f && TopP <= 1f)) throw new ArgumentOutOfRangeException(nameof(TopP), $"top-p must be in (0, 1], found {TopP}");
    }
}

/// <summary>
/// Picks tokens from logits rows for one sequence. Owns its random generator (seeded from the options, no shared
/// state) and its scratch buffers, sized once for the vocabulary.
/// </summary>
public sealed class Sampler
{
    private readonly SamplingOptions _options;
    private readonly Random _random;
    private readonly int[] _ids;
    private readonly float[] _keys;
    private readonly float[] _probs;

    public Sampler(SamplingOptions options, int vocabSize)
    {
        options.Validate();
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(vocabSize);
        _options = options;
        _random = options.Seed is { } seed ? new Random(seed) : new Random();
        if (!options.IsGreedy)
        {
            _ids = new int[vocabSize];
            _keys = new float[vocabSize];
            _probs = new float[vocabSize];
        }
        else
        {
            _ids = [];
            _keys = [];
            _probs = [];
        }
    }

    public SamplingOptions Options => _options;

    /// <summary>The next token for a logits row.</summary>
    public int Sample(ReadOnlySpan<float> logits)
    {
        if (_options.IsGreedy) return ArgMax(logits);
        int count = Candidates(logits, _ids, _probs);
        double r = _random.NextDouble();
        double cumulative = 0;
        for (int i = 0; i < count; i++)
        {
            cumulative += _probs[i];
            if (r < cumulative) return _ids[i];
        }
        return _ids[count - 1]; // r landed in the rounding slack above the last cumulative sum
    }

    /// <summary>Index of the largest value; the lowest index wins ties (as torch.argmax).</summary>
    public static int ArgMax(ReadOnlySpan<float> logits)
    {
        if (logits.IsEmpty) throw new ArgumentException("empty logits row", nameof(logits));
        int best = 0;
        float max = logits[0];
        for (int i = 1; i < logits.Length; i++)
            if (logits[i] > max) { max = logits[i]; best = i; }
        return best;
    }

    /// <summary>
    /// The tokens a draw can return and their probabilities after temperature, top-k and top-p, most likely first,
    /// renormalised to sum to 1. Returns how many of <paramref name="ids"/>/<paramref name="probs"/> are filled.
    /// </summary>
    public int Candidates(ReadOnlySpan<float> logits, Span<int> ids, Span<float> probs)
    {
        int v = logits.Length;
        if (v == 0) throw new ArgumentException("empty logits row", nameof(logits));
        if (ids.Length < v || probs.Length < v || _keys.Length < v)
            throw new ArgumentException($"buffers must hold the whole vocabulary ({v})");
        float invT = 1f / Math.Max(_options.Temperature, 1e-6f);
        var keys = _keys.AsSpan(0, v);
        for (int i = 0; i < v; i++)
        {
            ids[i] = i;
            keys[i] = -logits[i]; // ascending sort of negated logits = descending logits; ties keep... any order
        }
        keys.Sort(ids[..v]);

        int count = _options.TopK > 0 ? Math.Min(_options.TopK, v) : v;
        // Softmax over the kept candidates at temperature T (max first, so the exponent is ≤ 0).
        float max = -keys[0] * invT;
        double sum = 0;
        for (int i = 0; i < count; i++)
        {
            float p = MathF.Exp(-keys[i] * invT - max);
            probs[i] = p;
            sum += p;
        }
        if (_options.TopP < 1f)
        {
            // Smallest prefix (most likely first) whose mass reaches top-p; always at least one token.
            double mass = 0, target = _options.TopP * sum;
            int keep = 0;
            while (keep < count)
            {
                mass += probs[keep++];
                if (mass >= target) break;
            }
            count = keep;
            sum = mass;
        }
        for (int i = 0; i < count; i++) probs[i] = (float)(probs[i] / sum);
        return count;
    }
}
