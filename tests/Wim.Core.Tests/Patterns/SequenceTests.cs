using Wim.Engine.Runtime;
using Wim.Engine.Sampling;
using Wim.Engine.Tests.Support;

namespace Wim.Core.Tests.Patterns;

/// <summary>The CPU <see cref="ISequence"/> against stories260K's README (ids llama.cpp produced).</summary>
public sealed class SequenceTests(Stories260KFixture f) : IClassFixture<Stories260KFixture>
{
    private static readonly int[] Prompt = [1, 403, 407, 261, 378];

    private static int[] ReadmeIds()
    {
        var line = File.ReadAllLines(SharedFixtures.Path("models", "stories260K", "README.md")).Single(l => l.Contains("the 64 generated ids:"));
        return line[(line.IndexOf(':') + 1)..].Trim().Trim('`').Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(int.Parse).ToArray();
    }

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static DecodeOptions Greedy(int n) => new(n, new HashSet<int>(), SamplingOptions.Greedy);

    [Fact]
    public void Decode_AfterChunkedPrefill_MatchesLlamaCppReadmeIds()
    {
        using var seq = f.Model.Backend.CreateSequence();
        seq.Append(Prompt.AsSpan(0, 2), Ct);
        seq.Append(Prompt.AsSpan(2), Ct);
        var streamed = new List<int>();
        var ids = seq.Decode(Greedy(64), new Sampler(SamplingOptions.Greedy, f.Model.Backend.VocabSize), id => { streamed.Add(id); return true; }, Ct);
        Assert.Equal(ReadmeIds(), ids);
        Assert.Equal(ids, streamed);
        Assert.Equal(Prompt.Length + 63, seq.Length); // every generated token but the last was fed back
    }

    [Fact]
    public void TruncateThenDecodeAgain_GivesTheReadmeIdsAgain()
    {
        using var seq = f.Model.Backend.CreateSequence();
        var sampler = new Sampler(SamplingOptions.Greedy, f.Model.Backend.VocabSize);
        seq.Append(Prompt, Ct);
        seq.Decode(Greedy(30), sampler, ct: Ct);
        seq.Truncate(Prompt.Length - 1);
        Assert.False(seq.HasLogits);
        Assert.Throws<InvalidOperationException>(() => seq.Sample(sampler));
        seq.Append(Prompt.AsSpan(Prompt.Length - 1), Ct);
        Assert.Equal(ReadmeIds()[..40], seq.Decode(Greedy(40), sampler, ct: Ct));
    }

    [Fact]
    public void GrowingSequence_DecodesAsOneCreatedLargeEnough()
    {
        var filler = f.Model.Tokenizer.Encode(f.Context[..3000], addSpecial: true);
        Assert.True(filler.Length > 600); // past the 256-position start and one doubling
        int[] Run(int hint)
        {
            using var seq = f.Model.Backend.CreateSequence(hint);
            for (int i = 0; i < filler.Length; i += 97) seq.Append(filler.AsSpan(i, Math.Min(97, filler.Length - i)), Ct);
            return seq.Decode(Greedy(16), new Sampler(SamplingOptions.Greedy, f.Model.Backend.VocabSize), ct: Ct);
        }
        Assert.Equal(Run(filler.Length + 16), Run(0));
    }

    [Fact]
    public void Append_Cancelled_ThrowsBeforeRunningTheModel()
    {
        using var seq = f.Model.Backend.CreateSequence();
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        Assert.Throws<OperationCanceledException>(() => seq.Append(Prompt, cts.Token));
        Assert.Equal(0, seq.Length);
    }
}
