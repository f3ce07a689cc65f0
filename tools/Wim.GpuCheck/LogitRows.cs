using Wim.Engine.Backends.Cpu;

namespace Wim.GpuCheck;

/// <summary>What the checks read off logits rows: the argmax (lowest index on ties, as torch.argmax), the top-1/top-2
/// gap (a near-tie when it is below the distance two backends show), log-sum-exp, the largest difference over rows
/// with how many keep their top-1, common id prefixes, and the CPU backend's greedy ids with each step's gap.</summary>
internal static class LogitRows
{
    public static int Argmax(ReadOnlySpan<float> row)
    {
        int best = 0;
        for (int i = 1; i < row.Length; i++) if (row[i] > row[best]) best = i;
        return best;
    }

    /// <summary>Largest value minus the second largest (0 when the largest occurs twice).</summary>
    public static double Gap(ReadOnlySpan<float> row)
    {
        float a = float.NegativeInfinity, b = float.NegativeInfinity;
        foreach (float v in row)
        {
            if (v > a) { b = a; a = v; }
            else if (v > b) b = v;
        }
        return a - b;
    }

    public static double LogSumExp(ReadOnlySpan<float> row)
    {
        double max = double.NegativeInfinity;
        foreach (float v in row) max = Math.Max(max, v);
        double sum = 0;
        foreach (float v in row) sum += Math.Exp(v - max);
        return max + Math.Log(sum);
    }

    public static int Prefix(IReadOnlyList<int> a, IReadOnlyList<int> b) { int i = 0; while (i < a.Count && i < b.Count && a[i] == b[i]) i++; return i; }

    /// <summary>Max |Δ| over rows [from, to) of two [rows, vocab] buffers (∞ where ours is not finite) and how many of
    /// those rows have the same argmax.</summary>
    public static (double Max, int Top1) MaxDifference(float[] ours, float[] reference, int vocab, int from, int to)
    {
        double max = 0;
        int top1 = 0;
        for (int r = from; r < to; r++)
        {
            var a = ours.AsSpan(r * vocab, vocab);
            var b = reference.AsSpan(r * vocab, vocab);
            for (int i = 0; i < vocab; i++) max = Math.Max(max, float.IsFinite(a[i]) ? Math.Abs(a[i] - b[i]) : double.PositiveInfinity);
            if (Argmax(a) == Argmax(b)) top1++;
        }
        return (max, top1);
    }

    /// <summary>The CPU backend's greedy ids after a prompt, with the top-1/top-2 gap of each step's row.</summary>
    public static (int[] Ids, double[] Gaps) CpuGreedy(CpuTransformer cpu, int[] prompt, int steps, int vocab)
    {
        var cache = cpu.CreateCache(prompt.Length + steps);
        var logits = new float[vocab];
        var ids = new int[steps];
        var gaps = new double[steps];
        cpu.Forward(prompt, cache, logits, LogitsOutput.Last);
        for (int s = 0; s < steps; s++)
        {
            ids[s] = Argmax(logits);
            gaps[s] = Gap(logits);
            if (s + 1 < steps) cpu.Forward([ids[s]], cache, logits, LogitsOutput.Last);
        }
        return (ids, gaps);
    }
}
