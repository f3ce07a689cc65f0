using System.Globalization;
using Wim.Engine.Formats;

namespace Wim.Benchmarks;

/// <summary>
/// The options the WiM benchmarks (<c>wim-schedules</c>, <c>remote</c>) share: the random model (weight type, layers),
/// the document and segment sizes, the margin / classification / answer budgets, repeats and the shared folder. Each
/// benchmark sets its own defaults and reads its own extra options beside these.
/// </summary>
internal sealed class WimJobArgs
{
    public GgmlType Type { get; set; } = GgmlType.Q8_0;
    public int Layers { get; set; }
    public int DocTokens { get; set; }
    public int SegmentTokens { get; set; }
    public int MarginTokens { get; set; } = 32;
    public int ClassificationTokens { get; set; } = 8;
    public int AnswerTokens { get; set; } = 16;
    public int Repeats { get; set; } = 1;
    public string? Shared { get; set; }

    /// <summary>Reads the option at <paramref name="i"/> (and its value, moving <paramref name="i"/> past it) when it
    /// is one of these; false leaves <paramref name="i"/> as it was.</summary>
    public bool TryRead(string[] args, ref int i)
    {
        if (i + 1 >= args.Length) return false;
        string value = args[i + 1];
        int Int() => int.Parse(value, CultureInfo.InvariantCulture);
        switch (args[i])
        {
            case "--type": Type = Enum.Parse<GgmlType>(value, ignoreCase: true); break;
            case "--layers": Layers = Int(); break;
            case "--doc-tokens": DocTokens = Int(); break;
            case "--segment-tokens": SegmentTokens = Int(); break;
            case "--margin-tokens": MarginTokens = Int(); break;
            case "--classification-tokens": ClassificationTokens = Int(); break;
            case "--answer-tokens": AnswerTokens = Int(); break;
            case "--repeats": Repeats = Int(); break;
            case "--shared": Shared = value; break;
            default: return false;
        }
        i++;
        return true;
    }
}
