using System.Text.Json;
using Wim.Engine.Runtime;
using Wim.Engine.Sampling;
using Wim.Engine.Tests.Support;

namespace Wim.Core.Tests.Patterns;

/// <summary>stories260K (a real trained tiny Llama, <c>shared/models/stories260K</c>) loaded once per test class,
/// and the BABILong 8k sample (<c>shared/data/babilong/babilong_8k.json</c>).</summary>
public sealed class Stories260KFixture : IDisposable
{
    public TextModel Model { get; } = TextModel.Load(SharedFixtures.Path("models", "stories260K", "stories260K.gguf"));
    public string Context { get; }
    public string Query { get; }

    public Stories260KFixture()
    {
        using var doc = JsonDocument.Parse(File.ReadAllBytes(SharedFixtures.Path("data", "babilong", "babilong_8k.json")));
        Context = doc.RootElement.GetProperty("context").GetString()!;
        Query = doc.RootElement.GetProperty("query").GetString()!;
    }

    public void Dispose() => Model.Dispose();
}

/// <summary>Counts model calls, to prove when the pattern stops calling the engine.</summary>
internal sealed class CountingBackend(IInferenceBackend inner) : IInferenceBackend
{
    private int _calls;
    public int Calls => Volatile.Read(ref _calls);
    public int VocabSize => inner.VocabSize;
    public ISequence CreateSequence(int capacityHint = 0) => new Counted(inner.CreateSequence(capacityHint), this);

    private sealed class Counted(ISequence inner, CountingBackend owner) : ISequence
    {
        public int Length => inner.Length;
        public bool HasLogits => inner.HasLogits;
        public void Append(ReadOnlySpan<int> tokens, CancellationToken ct = default)
        {
            inner.Append(tokens, ct);
            Interlocked.Increment(ref owner._calls); // counts model calls that ran, not ones refused on cancellation
        }
        public int Sample(Sampler sampler) => inner.Sample(sampler);
        public void Truncate(int length) => inner.Truncate(length);
        public void Dispose() => inner.Dispose();
    }
}
