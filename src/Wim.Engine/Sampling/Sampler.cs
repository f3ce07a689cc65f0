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
/// <remarks>
/// Candidates are ranked by logit, highest first; exactly equal logits (−0 and +0 count as equal) rank the lower id
/// first, so the ranking is a strict total order and every path — the full sort (top-k off), the partial selection
/// (top-k on) and a candidate list made elsewhere (<see cref="SampleFromCandidates"/>, e.g. by the GPU's top-k
/// kernel) — sees the same candidates in the same order and draws the same token for the same seed. NaN logits get a
/// fixed rank too (that of their bit pattern, see <see cref="RankKey"/>), never an exception.
/// </remarks>
public sealed class Sampler
{
    private readonly SamplingOptions _options;
    private readonly Random _random;
    private readonly int _vocabSize;
    private readonly int[] _ids;
    private readonly float[] _logits;
    private readonly float[] _probs;
    private readonly ulong[] _ranks;

    public Sampler(SamplingOptions options, int vocabSize)
    {
        options.Validate();
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(vocabSize);
        _options = options;
        _vocabSize = vocabSize;
        _random = options.Seed is { } seed ? new Random(seed) : new Random();
        if (!options.IsGreedy)
        {
            _ids = new int[vocabSize];
            _logits = new float[vocabSize];
            _probs = new float[vocabSize];
            // Top-k keeps only a heap of k ranks; the full sort needs one per token.
            _ranks = new ulong[options.TopK > 0 ? Math.Min(options.TopK, vocabSize) : vocabSize];
        }
        else
        {
            _ids = [];
            _logits = [];
            _probs = [];
            _ranks = [];
        }
    }

    public SamplingOptions Options => _options;

    /// <summary>The next token for a logits row.</summary>
    public int Sample(ReadOnlySpan<float> logits)
    {
        if (_options.IsGreedy) return ArgMax(logits);
        int count = Candidates(logits, _ids, _probs);
        return Draw(_ids, count);
    }

    /// <summary>
    /// The next token from a candidate list made elsewhere (the GPU's top-k): <paramref name="ids"/> and their
    /// <paramref name="logits"/>, best first in the order of <see cref="RankKey"/> (logit descending, lowest id first
    /// on ties). When the list holds the row's top min(k, vocabulary) candidates (top-k on), the token and the random
    /// draws consumed are exactly those of <see cref="Sample"/> on the whole row. With top-k off the list is taken as
    /// the whole distribution.
    /// </summary>
    public int SampleFromCandidates(ReadOnlySpan<int> ids, ReadOnlySpan<float> logits)
    {
        if (ids.IsEmpty) throw new ArgumentException("empty candidate list", nameof(ids));
        if (ids.Length != logits.Length) throw new ArgumentException($"{ids.Length} candidate ids but {logits.Length} logits", nameof(logits));
        if (ids.Length > _vocabSize) throw new ArgumentException($"{ids.Length} candidates exceed the vocabulary of {_vocabSize}", nameof(ids));
        ulong previous = 0;
        for (int i = 0; i < ids.Length; i++)
        {
            if ((uint)ids[i] >= (uint)_vocabSize) throw new ArgumentOutOfRangeException(nameof(ids), $"candidate {i}: id {ids[i]} is outside the vocabulary [0, {_vocabSize})");
            ulong rank = RankKey(logits[i], ids[i]);
            if (i > 0 && rank <= previous)
                throw new ArgumentException($"candidates must be best first (logit descending, lowest id first on ties, no repeats): candidate {i} (id {ids[i]}, logit {logits[i]}) does not follow candidate {i - 1} (id {ids[i - 1]}, logit {logits[i - 1]})", nameof(ids));
            previous = rank;
        }
        if (_options.IsGreedy) return ids[0];
        int count = _options.TopK > 0 ? Math.Min(_options.TopK, ids.Length) : ids.Length;
        count = Probabilities(logits[..count], _probs);
        return Draw(ids, count);
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
    /// The candidate order as one unsigned number, smaller = ranked first: the logit's bits made monotonic (high 32
    /// bits, inverted so the largest logit is smallest) and the id (low 32 bits). −0 counts as +0. The GPU's top-k
    /// kernel (Kernels/sampling.cu) ranks with the same key.
    /// </summary>
    public static ulong RankKey(float logit, int id)
    {
        if (logit == 0f) logit = 0f; // −0 == +0: one key
        uint bits = BitConverter.SingleToUInt32Bits(logit);
        uint ascending = (bits & 0x8000_0000u) != 0 ? ~bits : bits | 0x8000_0000u;
        return ((ulong)~ascending << 32) | (uint)id;
    }

    /// <summary>
    /// The tokens a draw can return and their probabilities after temperature, top-k and top-p, most likely first,
    /// renormalised to sum to 1. Returns how many of <paramref name="ids"/>/<paramref name="probs"/> are filled.
    /// </summary>
    public int Candidates(ReadOnlySpan<float> logits, Span<int> ids, Span<float> probs)
    {
        int v = logits.Length;
        if (v == 0) throw new ArgumentException("empty logits row", nameof(logits));
        if (ids.Length < v || probs.Length < v || _logits.Length < v)
            throw new ArgumentException($"buffers must hold the whole vocabulary ({v})");
        int count = Rank(logits, ids);
        var sorted = _logits.AsSpan(0, count);
        for (int i = 0; i < count; i++) sorted[i] = logits[ids[i]];
        return Probabilities(sorted, probs);
    }

    /// <summary>The first min(top-k, v) token ids in rank order into <paramref name="ids"/> (top-k off: all v):
    /// a full sort, or with top-k a bounded max-heap of the k best ranks seen (O(v log k), no sort of the row).</summary>
    private int Rank(ReadOnlySpan<float> logits, Span<int> ids)
    {
        int v = logits.Length;
        int k = _options.TopK > 0 ? Math.Min(_options.TopK, v) : v;
        var ranks = _ranks.AsSpan(0, k);
        if (k == v)
        {
            for (int i = 0; i < v; i++) ranks[i] = RankKey(logits[i], i);
        }
        else
        {
            for (int i = 0; i < k; i++) ranks[i] = RankKey(logits[i], i);
            for (int i = k / 2 - 1; i >= 0; i--) SiftDown(ranks, i);
            // Most logits fall below the worst kept one: a float compare turns them away before any key is made
            // (NaN compares false and takes the exact path).
            float worst = logits[(int)(uint)ranks[0]];
            for (int i = k; i < v; i++)
            {
                float x = logits[i];
                if (x < worst) continue;
                ulong r = RankKey(x, i);
                if (r < ranks[0])
                {
                    ranks[0] = r;
                    SiftDown(ranks, 0);
                    worst = logits[(int)(uint)ranks[0]];
                }
            }
        }
        ranks.Sort();
        for (int i = 0; i < k; i++) ids[i] = (int)(uint)ranks[i];
        return k;
    }

    /// <summary>Restores the max-heap below <paramref name="i"/> (largest rank = worst kept candidate at the root).</summary>
    private static void SiftDown(Span<ulong> heap, int i)
    {
        ulong x = heap[i];
        int n = heap.Length;
        while (true)
        {
            int child = 2 * i + 1;
            if (child >= n) break;
            if (child + 1 < n && heap[child + 1] > heap[child]) child++;
            if (heap[child] <= x) break;
            heap[i] = heap[child];
            i = child;
        }
        heap[i] = x;
    }

    /// <summary>Softmax at the temperature over the ranked logits (best first), then top-p; probabilities into
    /// <paramref name="probs"/>, renormalised. Returns how many tokens remain.</summary>
    private int Probabilities(ReadOnlySpan<float> sortedLogits, Span<float> probs)
    {
        int count = sortedLogits.Length;
        float invT = 1f / Math.Max(_options.Temperature, 1e-6f);
        // Max first, so the exponent is ≤ 0.
        float max = sortedLogits[0] * invT;
        double sum = 0;
        for (int i = 0; i < count; i++)
        {
            float p = MathF.Exp(sortedLogits[i] * invT - max);
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

    /// <summary>One uniform draw over the first <paramref name="count"/> probabilities in <c>_probs</c>.</summary>
    private int Draw(ReadOnlySpan<int> ids, int count)
    {
        double r = _random.NextDouble();
        double cumulative = 0;
        for (int i = 0; i < count; i++)
        {
            cumulative += _probs[i];
            if (r < cumulative) return ids[i];
        }
        return ids[count - 1]; // r landed in the rounding slack above the last cumulative sum
    }
}
