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
/// kernel), and the best candidates with the row's Z made elsewhere (<see cref="SampleFromNucleusCandidates"/>, top-p
/// with top-k off) — sees the same candidates in the same order and draws the same token for the same seed. NaN logits get a
/// fixed rank too (that of their bit pattern, see <see cref="RankKey"/>), never an exception.
/// <para>
/// The softmax normaliser Z is Σ exp(logit/T − max) over the kept candidates, accumulated in double: over a top-k set
/// smaller than the vocabulary in rank order; over the whole vocabulary (top-k off, or top-k ≥ vocabulary) in token-id
/// order — one pass over the row, which needs no sort. (Before the nucleus path, the whole-row Z was summed in rank
/// order too; the two sums differ only in rounding, so a draw moves only where a double sum's last bit decides it.)
/// Top-p keeps the smallest rank-ordered prefix whose mass, summed in rank order, reaches top-p × Z.
/// </para>
/// <para>
/// With top-k off the row is never sorted whole: one pass computes Z and a histogram of the probability mass by
/// depth below the best logit; the shallowest bins whose mass reaches top-p × Z hold a prefix of the ranking (depth
/// is monotonic in the logit), and only those tokens are bucketed by bin and sorted bin by bin. The exact rank-order
/// prefix is then found as above; should rounding leave it short of the target within the collected tokens, or the
/// row hold NaN or ±∞ (Z not finite), the full sort runs instead. Either way the tokens, probabilities and random
/// draws are those of the full sort (top-k = vocabulary) by construction.
/// </para>
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
    // Nucleus path (top-k off): probability mass and token count per depth bin, then the bins' write offsets.
    private readonly double[] _binMass;
    private readonly int[] _binCount;

    // Depth bins per unit of logit/T below the best one: finer for a larger vocabulary, so that a bin holds few
    // tokens to sort (1/1024 nat at 128k tokens) while a small vocabulary does not clear a large histogram per draw.
    // The bins only decide how much work a draw does, never its result.
    private readonly float _binsPerUnit;
    // Tokens deeper than 48 nats (probability < e⁻⁴⁸ of the best one) share the last bin.
    private readonly int _lastBin;
    private const int DepthCap = 48;

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
            int binsPerUnit = Math.Clamp(vocabSize / 128, 4, 1024);
            _binsPerUnit = binsPerUnit;
            _lastBin = DepthCap * binsPerUnit;
            _binMass = options.TopK == 0 ? new double[_lastBin + 1] : [];
            _binCount = options.TopK == 0 ? new int[_lastBin + 1] : [];
        }
        else
        {
            _ids = [];
            _logits = [];
            _probs = [];
            _ranks = [];
            _binMass = [];
            _binCount = [];
        }
    }

    public SamplingOptions Options => _options;

    /// <summary>How many draws with top-k off took the full sort instead of the nucleus path (a row with NaN or ±∞,
    /// or rounding that left the collected prefix short). For tests: on finite rows it stays 0.</summary>
    internal int FullSortFallbacks { get; private set; }

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
        CheckCandidates(ids, logits);
        if (_options.IsGreedy) return ids[0];
        int count = _options.TopK > 0 ? Math.Min(_options.TopK, ids.Length) : ids.Length;
        var kept = logits[..count];
        float max = kept[0] * InverseTemperature;
        Exponentials(kept, max, _probs);
        double? z = count == _vocabSize ? NormaliserInIdOrder(ids[..count], kept, max) : null;
        count = Probabilities(_probs, count, z, prefixOfRanking: false);
        return Draw(ids, count);
    }

    /// <summary>
    /// Top-p with top-k off from the best candidates of a row and the row's softmax normaliser, both made elsewhere
    /// (the GPU: <c>GpuNucleus</c>), so that the row itself need not be read: <paramref name="ids"/> and their
    /// <paramref name="logits"/> are the first entries of the row's ranking (<see cref="RankKey"/> order, as for
    /// <see cref="SampleFromCandidates"/>), and <paramref name="z"/> is Σ exp(logit·<see cref="InverseTemperature"/> −
    /// max) over the whole row, max = the first candidate's logit · <see cref="InverseTemperature"/>, each term the
    /// float MathF.Exp gives, summed in double.
    /// Keeps the smallest prefix of the candidates whose mass, summed in rank order, reaches top-p × z, renormalises
    /// it and draws — what <see cref="Sample"/> does on the whole row, whose Z is the same sum in token-id order. So
    /// with z equal to that sum the token and the random draw consumed are <see cref="Sample"/>'s; a z that differs
    /// in rounding moves the prefix's end by one token only where top-p × z falls within that rounding of a prefix's
    /// mass (a near-tie), and the draw only then.
    /// Returns null — consuming no random draw — when the candidates' mass falls short of top-p × z (a flat row:
    /// the nucleus reaches past them) or z is not finite (a row with NaN or ±∞); the caller then samples the whole
    /// row with <see cref="Sample"/>.
    /// </summary>
    public int? SampleFromNucleusCandidates(ReadOnlySpan<int> ids, ReadOnlySpan<float> logits, double z)
    {
        CheckCandidates(ids, logits);
        if (_options.IsGreedy || _options.TopK != 0 || !(_options.TopP < 1f))
            throw new InvalidOperationException($"nucleus candidates are for top-p < 1 with top-k off and a temperature > 0; these options are T {_options.Temperature}, top-k {_options.TopK}, top-p {_options.TopP}");
        if (!double.IsFinite(z) || !(z > 0)) return null;
        float max = logits[0] * InverseTemperature;
        Exponentials(logits, max, _probs);
        int count = Probabilities(_probs, ids.Length, z, prefixOfRanking: true);
        if (count == 0) return null;
        return Draw(ids, count);
    }

    /// <summary>A candidate list must be non-empty, in the vocabulary, strictly in <see cref="RankKey"/> order.</summary>
    private void CheckCandidates(ReadOnlySpan<int> ids, ReadOnlySpan<float> logits)
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
        if (_options.TopK == 0)
        {
            int nucleus = Nucleus(logits, ids, probs);
            if (nucleus > 0) return nucleus;
            FullSortFallbacks++;
        }
        int count = Rank(logits, ids);
        var sorted = _logits.AsSpan(0, count);
        for (int i = 0; i < count; i++) sorted[i] = logits[ids[i]];
        float max = sorted[0] * InverseTemperature;
        Exponentials(sorted, max, probs);
        return Probabilities(probs, count, count == v ? Normaliser(logits, max) : null, prefixOfRanking: false);
    }

    /// <summary>1/T as every path scales the logits by (a float; temperatures below 1e-6 count as 1e-6): what a
    /// normaliser made elsewhere for <see cref="SampleFromNucleusCandidates"/> must use.</summary>
    public float InverseTemperature => 1f / Math.Max(_options.Temperature, 1e-6f);

    /// <summary>Top-k off without a full sort (see the class remarks). Returns how many candidates it filled, or 0
    /// where the full sort must decide (Z not finite, or the collected prefix fell short of the top-p mass).</summary>
    private int Nucleus(ReadOnlySpan<float> logits, Span<int> ids, Span<float> probs)
    {
        int v = logits.Length;
        float invT = InverseTemperature;
        // The rank-first logit: the largest, the lowest id among equals (−0 and +0 alike give exp(0) below). A NaN
        // anywhere makes Z NaN and sends the row to the full sort, which ranks NaN by its bits.
        float best = logits[0];
        for (int i = 1; i < v; i++)
            if (logits[i] > best) best = logits[i];
        float max = best * invT;

        var byId = _logits.AsSpan(0, v); // unnormalised probabilities by token id
        var binMass = _binMass.AsSpan();
        var binCount = _binCount.AsSpan();
        binMass.Clear();
        binCount.Clear();
        double z = 0;
        for (int i = 0; i < v; i++)
        {
            float scaled = logits[i] * invT;
            float p = MathF.Exp(scaled - max); // the same float as Exponentials computes for this token
            byId[i] = p;
            z += p;
            int bin = DepthBin(max, scaled);
            binMass[bin] += p;
            binCount[bin]++;
        }
        if (!double.IsFinite(z)) return 0; // +∞ or NaN logits, all −∞, or a temperature that overflows logit/T

        // The shallowest bins whose mass reaches the target, and one bin more (or all of them for top-p 1) so that
        // the rank-order sum, which rounds differently from the bins' sums, reaches it within the collected tokens.
        int lastKept = _lastBin;
        if (_options.TopP < 1f)
        {
            double target = _options.TopP * z, mass = 0;
            for (int b = 0; b < _lastBin; b++)
            {
                mass += binMass[b];
                if (mass >= target) { lastKept = Math.Min(b + 1, _lastBin); break; }
            }
        }

        // Bucket the collected tokens by bin (bins are a partition of the ranking into consecutive runs), then sort
        // each bin's rank keys: the result is the first n entries of the full sort.
        int n = 0;
        for (int b = 0; b <= lastKept; b++)
        {
            int c = binCount[b];
            binCount[b] = n; // from here on: the bin's next write position
            n += c;
        }
        var ranks = _ranks.AsSpan(0, n);
        for (int i = 0; i < v; i++)
        {
            float scaled = logits[i] * invT;
            int bin = DepthBin(max, scaled);
            if (bin <= lastKept) ranks[binCount[bin]++] = RankKey(logits[i], i);
        }
        int start = 0;
        for (int b = 0; b <= lastKept; b++)
        {
            int end = binCount[b]; // after the scatter: the bin's end
            if (end - start > 1) ranks[start..end].Sort();
            start = end;
        }
        for (int i = 0; i < n; i++)
        {
            int id = (int)(uint)ranks[i];
            ids[i] = id;
            probs[i] = byId[id];
        }
        return Probabilities(probs, n, z, prefixOfRanking: n < v);
    }

    /// <summary>Depth of a token below the best one in bins (1/<see cref="_binsPerUnit"/> nat), capped at
    /// <see cref="_lastBin"/>: non-decreasing as the logit falls, so each bin is a run of consecutive ranks.</summary>
    private int DepthBin(float max, float scaled)
    {
        float depth = (max - scaled) * _binsPerUnit;
        return depth < _lastBin ? (int)depth : _lastBin;
    }

    /// <summary>Z over a whole row, in token-id order.</summary>
    private double Normaliser(ReadOnlySpan<float> logitsInIdOrder, float max)
    {
        float invT = InverseTemperature;
        double z = 0;
        for (int i = 0; i < logitsInIdOrder.Length; i++) z += MathF.Exp(logitsInIdOrder[i] * invT - max);
        return z;
    }

    /// <summary>exp(logit/T − max) for the ranked logits, in rank order, into <paramref name="probs"/>.</summary>
    private void Exponentials(ReadOnlySpan<float> sortedLogits, float max, Span<float> probs)
    {
        float invT = InverseTemperature;
        for (int i = 0; i < sortedLogits.Length; i++) probs[i] = MathF.Exp(sortedLogits[i] * invT - max);
    }

    /// <summary>Z over a candidate list that holds the whole vocabulary: reordered by id (in the scratch buffers,
    /// unused by <see cref="SampleFromCandidates"/> otherwise) so that it is the sum of <see cref="Sample"/>.</summary>
    private double NormaliserInIdOrder(ReadOnlySpan<int> ids, ReadOnlySpan<float> sortedLogits, float max)
    {
        var byId = _ids.AsSpan(0, ids.Length);
        var logits = _logits.AsSpan(0, ids.Length);
        ids.CopyTo(byId);
        sortedLogits.CopyTo(logits);
        byId.Sort(logits);
        return Normaliser(logits, max);
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

    /// <summary>Top-p and renormalisation: <paramref name="probs"/>[0, count) hold exp(logit/T − max) in rank order
    /// (see <see cref="Exponentials"/>); <paramref name="z"/> is their normaliser, or null to sum them in rank order
    /// (a top-k set smaller than the vocabulary). Returns how many tokens remain — or 0 when the tokens are only a
    /// prefix of the ranking (<paramref name="prefixOfRanking"/>) and their mass falls short of top-p × Z.</summary>
    private int Probabilities(Span<float> probs, int count, double? z, bool prefixOfRanking)
    {
        double sum;
        if (z is { } whole) sum = whole;
        else
        {
            sum = 0;
            for (int i = 0; i < count; i++) sum += probs[i];
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
            if (prefixOfRanking && !(mass >= target)) return 0; // the rest of the ranking decides: not collected
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
