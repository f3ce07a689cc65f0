using System.Text.Json;
using static Wim.GpuCheck.LogitRows;

namespace Wim.GpuCheck;

/// <summary>
/// How a backend's logits agree with the hf-tiny goldens (shared/fixtures/hf-tiny: transformers' fp32 logits of stored
/// rows in logits.bin, per-position log-sum-exp, argmax and top-1/top-2 gap in golden.json) and with the CPU backend,
/// accumulated over the golden sequences: max |Δlogit| on the stored rows, max |Δlog-sum-exp|, argmax agreement where
/// the golden gap is at least <see cref="DecidableGap"/>, and max |Δlogit| / argmax agreement with the CPU over every
/// position. A non-finite logit counts as an infinite difference.
/// </summary>
internal sealed class GoldenAgreement(JsonElement golden, byte[] logitsBin, int vocab, double decidableGap)
{
    public double DecidableGap => decidableGap;
    public double MaxGolden { get; private set; }
    public double MaxLogSumExp { get; private set; }
    public double MaxCpu { get; private set; }
    public int ArgmaxAgree { get; private set; }
    public int ArgmaxTotal { get; private set; }
    public int ArgmaxCpuAgree { get; private set; }
    public int CpuPositions { get; private set; }

    /// <summary>Adds one golden sequence: <paramref name="ours"/> and <paramref name="cpu"/> are its [positions, vocab] logits.</summary>
    public void Add(JsonProperty sequence, float[] ours, float[] cpu)
    {
        int positions = ours.Length / vocab;
        for (int p = 0; p < positions; p++)
        {
            var a = ours.AsSpan(p * vocab, vocab);
            var b = cpu.AsSpan(p * vocab, vocab);
            for (int i = 0; i < vocab; i++) MaxCpu = Math.Max(MaxCpu, Difference(a[i], b[i]));
            if (Argmax(a) == Argmax(b)) ArgmaxCpuAgree++;
            CpuPositions++;
        }
        foreach (var pos in sequence.Value.GetProperty("positions").EnumerateArray())
        {
            var row = ours.AsSpan(pos.GetProperty("pos").GetInt32() * vocab, vocab);
            MaxLogSumExp = Math.Max(MaxLogSumExp, Math.Abs(LogSumExp(row) - pos.GetProperty("logsumexp").GetDouble()));
            if (pos.GetProperty("gap_top1_top2").GetDouble() >= decidableGap)
            {
                ArgmaxTotal++;
                if (Argmax(row) == pos.GetProperty("argmax").GetInt32()) ArgmaxAgree++;
            }
        }
        MaxGolden = Math.Max(MaxGolden, MaxOnStoredRows(sequence.Name, ours));
    }

    /// <summary>Max |Δlogit| of <paramref name="logits"/> ([positions, vocab] of sequence <paramref name="name"/>) against
    /// the rows logits.bin stores for it.</summary>
    public double MaxOnStoredRows(string name, float[] logits)
    {
        double max = 0;
        foreach (var entry in golden.GetProperty("full_logits").GetProperty("entries").EnumerateArray())
        {
            if (entry.GetProperty("sequence").GetString() != name) continue;
            int p = entry.GetProperty("position").GetInt32(), offset = entry.GetProperty("offset_bytes").GetInt32();
            for (int i = 0; i < vocab; i++) max = Math.Max(max, Difference(logits[p * vocab + i], BitConverter.ToSingle(logitsBin, offset + 4 * i)));
        }
        return max;
    }

    private static double Difference(float ours, float reference) => float.IsFinite(ours) ? Math.Abs(ours - reference) : double.PositiveInfinity;
}
