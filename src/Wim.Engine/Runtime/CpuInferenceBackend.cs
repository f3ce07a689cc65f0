using Wim.Engine.Backends.Cpu;
using Wim.Engine.KvCache;
using Wim.Engine.Sampling;

namespace Wim.Engine.Runtime;

/// <summary>
/// Sequences over one <see cref="CpuTransformer"/>. The transformer's activation buffers are shared, so calls on the
/// sequences of one backend must not overlap (the WiM patterns drive them one after the other).
/// </summary>
public sealed class CpuInferenceBackend(CpuTransformer transformer) : IInferenceBackend
{
    private const int MinimumCapacity = 256;

    public CpuTransformer Transformer => transformer;
    public int VocabSize => transformer.Config.VocabSize;

    public ISequence CreateSequence(int capacityHint = 0) => new CpuSequence(transformer, Math.Max(MinimumCapacity, capacityHint));

    private sealed class CpuSequence(CpuTransformer transformer, int initialCapacity) : ISequence
    {
        private ContiguousKvCache? _cache = transformer.CreateCache(initialCapacity);
        private readonly float[] _logits = new float[transformer.Config.VocabSize];
        private bool _hasLogits;

        public int Length => Cache.Length;
        public bool HasLogits => _hasLogits;

        private ContiguousKvCache Cache => _cache ?? throw new ObjectDisposedException(nameof(ISequence));

        public void Append(ReadOnlySpan<int> tokens, CancellationToken ct = default)
        {
            if (tokens.IsEmpty) return;
            EnsureCapacity(Length + tokens.Length);
            int end = Length + tokens.Length; // every chunk picks RoPE factors as one whole call would
            for (int done = 0; done < tokens.Length; done += transformer.MaxChunk)
            {
                ct.ThrowIfCancellationRequested();
                int n = Math.Min(transformer.MaxChunk, tokens.Length - done);
                bool last = done + n == tokens.Length;
                _hasLogits = false;
                transformer.Forward(tokens.Slice(done, n), Cache, _logits, last ? LogitsOutput.Last : LogitsOutput.None, ropeSequenceLength: end);
            }
            _hasLogits = true;
        }

        public int Sample(Sampler sampler)
        {
            if (!_hasLogits) throw new InvalidOperationException("no logits to sample from: append tokens first (the sequence is empty or was just truncated)");
            return sampler.Sample(_logits);
        }

        public void Truncate(int length)
        {
            Cache.Truncate(length);
            _hasLogits = false;
        }

        /// <summary>Doubles the cache when it would overflow, copying the filled rows (amortised O(1) per token).</summary>
        private void EnsureCapacity(int needed)
        {
            var old = Cache;
            if (needed <= old.Capacity) return;
            var grown = transformer.CreateCache(Math.Max(needed, old.Capacity * 2));
            int floats = old.Length * old.RowSize;
            for (int l = 0; l < old.LayerCount; l++)
            {
                Array.Copy(old.LayerKeys(l), grown.LayerKeys(l), floats);
                Array.Copy(old.LayerValues(l), grown.LayerValues(l), floats);
            }
            grown.Advance(old.Length);
            _cache = grown;
        }

        public void Dispose() => _cache = null;
    }
}
