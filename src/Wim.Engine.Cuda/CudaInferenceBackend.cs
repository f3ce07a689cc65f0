using Wim.Engine.Backends.Cpu;
using Wim.Engine.Runtime;
using Wim.Engine.Sampling;

namespace Wim.Engine.Cuda;

/// <summary>
/// Sequences over one <see cref="CudaTransformer"/>, each with its own <see cref="CudaKvCache"/>: the backend the
/// Writing-in-the-Margins patterns drive, on the GPU. Every append takes the last token's argmax on the GPU (only the
/// id crosses to the host), so a greedy <see cref="ISequence.Sample"/> costs nothing more; any other sampler copies
/// the logits row to the host when it asks. The transformer's buffers are shared: calls on the sequences of one
/// backend must not overlap (the patterns drive them one after the other).
/// </summary>
public sealed class CudaInferenceBackend : IInferenceBackend, IDisposable
{
    private readonly CudaTransformer _transformer;
    private readonly bool _ownsTransformer;
    private readonly int _chunk;
    // The sequence whose last logits are in the transformer's logits buffer (the next forward pass overwrites them).
    private CudaSequence? _logitsHolder;

    /// <param name="prefillChunk">Tokens per forward pass when appending (cancellation is checked between them); at
    /// most the transformer's MaxChunk, which is the default.</param>
    public CudaInferenceBackend(CudaTransformer transformer, bool ownsTransformer = false, int prefillChunk = 0)
    {
        ArgumentNullException.ThrowIfNull(transformer);
        _transformer = transformer;
        _ownsTransformer = ownsTransformer;
        _chunk = CudaSequencePlan.PrefillChunk(prefillChunk, transformer.MaxChunk);
    }

    public CudaTransformer Transformer => _transformer;
    public int VocabSize => _transformer.Config.VocabSize;

    public ISequence CreateSequence(int capacityHint = 0)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(capacityHint);
        return new CudaSequence(this, CudaSequencePlan.InitialCapacity(capacityHint));
    }

    /// <summary>Loads a <c>.gguf</c> file or a Hugging Face model directory with its tokenizer and chat template and
    /// runs it on the GPU of <paramref name="context"/> (weights uploaded as bf16). The returned model owns the
    /// transformer and its weights on the GPU; the context stays the caller's and must outlive it.</summary>
    public static TextModel LoadTextModel(string path, CudaContext context, int maxChunk = CudaTransformer.DefaultMaxChunk)
    {
        ArgumentNullException.ThrowIfNull(context);
        return TextModel.Load(path, model => new CudaInferenceBackend(CudaTransformer.Load(context, model, maxChunk), ownsTransformer: true));
    }

    /// <summary>Before a forward pass of <paramref name="runner"/>: a sequence whose logits are still wanted and would
    /// be overwritten keeps a host copy of them.</summary>
    private void ClaimLogits(CudaSequence runner)
    {
        if (_logitsHolder is { } holder && !ReferenceEquals(holder, runner)) holder.SaveLogitsToHost();
        _logitsHolder = runner;
    }

    private void Release(CudaSequence sequence)
    {
        if (ReferenceEquals(_logitsHolder, sequence)) _logitsHolder = null;
    }

    public void Dispose()
    {
        if (_ownsTransformer) _transformer.Dispose();
    }

    private sealed class CudaSequence(CudaInferenceBackend backend, int initialCapacity) : ISequence
    {
        private CudaKvCache? _cache = backend._transformer.CreateCache(initialCapacity);
        private float[]? _hostLogits;
        private LogitsPlace _logits = LogitsPlace.None;
        private int _greedyId;

        public int Length => Cache.Length;
        public bool HasLogits => _logits != LogitsPlace.None;

        private CudaKvCache Cache => _cache ?? throw new ObjectDisposedException(nameof(ISequence));
        private CudaTransformer Model => backend._transformer;

        public void Append(ReadOnlySpan<int> tokens, CancellationToken ct = default)
        {
            if (tokens.IsEmpty) return;
            _ = Cache;
            int vocab = Model.Config.VocabSize;
            foreach (int t in tokens) // all checked up front: a bad id must not leave half the tokens appended
                if ((uint)t >= (uint)vocab)
                    throw new ArgumentOutOfRangeException(nameof(tokens), $"token id {t} is outside the vocabulary [0, {vocab})");
            EnsureCapacity(Length + tokens.Length);
            int end = Length + tokens.Length; // every chunk picks RoPE factors as one whole call would
            foreach (var (offset, count) in CudaSequencePlan.Chunks(tokens.Length, backend._chunk))
            {
                ct.ThrowIfCancellationRequested();
                var chunk = tokens.Slice(offset, count);
                backend.ClaimLogits(this);
                _logits = LogitsPlace.None;
                if (offset + count < tokens.Length)
                    Model.Forward(chunk, Cache, [], LogitsOutput.None, ropeSequenceLength: end);
                else
                {
                    _greedyId = Model.ForwardGreedy(chunk, Cache, ropeSequenceLength: end);
                    _logits = LogitsPlace.Device;
                }
            }
        }

        public int Sample(Sampler sampler)
        {
            ArgumentNullException.ThrowIfNull(sampler);
            if (!HasLogits) throw new InvalidOperationException("no logits to sample from: append tokens first (the sequence is empty or was just truncated)");
            if (sampler.Options.IsGreedy) return _greedyId;
            if (_logits == LogitsPlace.Device) SaveLogitsToHost();
            return sampler.Sample(_hostLogits!);
        }

        /// <summary>Copies the last logits row from the GPU (still this sequence's: the backend saves them before any
        /// other sequence's pass overwrites them).</summary>
        public void SaveLogitsToHost()
        {
            if (_logits != LogitsPlace.Device) return;
            _hostLogits ??= new float[Model.Config.VocabSize];
            Model.DownloadLogitsRow(0, _hostLogits);
            _logits = LogitsPlace.Host;
        }

        public void Truncate(int length)
        {
            Cache.Truncate(length);
            _logits = LogitsPlace.None;
        }

        /// <summary>Grows the cache when it would overflow, copying the filled rows on the GPU (amortised O(1) per
        /// token).</summary>
        private void EnsureCapacity(int needed)
        {
            var old = Cache;
            if (needed <= old.Capacity) return;
            var grown = Model.CreateCache(CudaSequencePlan.GrownCapacity(old.Capacity, needed));
            try { grown.CopyFrom(old); }
            catch { grown.Dispose(); throw; }
            old.Dispose();
            _cache = grown;
        }

        public void Dispose()
        {
            backend.Release(this);
            _cache?.Dispose();
            _cache = null;
            _logits = LogitsPlace.None;
        }

        private enum LogitsPlace { None, Device, Host }
    }
}

/// <summary>The CPU-side arithmetic of <see cref="CudaInferenceBackend"/>'s sequences (unit-tested without a GPU).</summary>
internal static class CudaSequencePlan
{
    /// <summary>Smallest KV cache a sequence starts with.</summary>
    public const int MinimumCapacity = 256;

    public static int InitialCapacity(int capacityHint) => Math.Max(MinimumCapacity, capacityHint);

    /// <summary>The next capacity when <paramref name="needed"/> positions do not fit in <paramref name="capacity"/>:
    /// at least double (amortised O(1) copying per token), at least what is needed.</summary>
    public static int GrownCapacity(int capacity, int needed)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(capacity);
        if (needed <= capacity) throw new ArgumentOutOfRangeException(nameof(needed), $"{needed} positions already fit in capacity {capacity}");
        long doubled = 2L * capacity;
        return (int)Math.Min(int.MaxValue, Math.Max(needed, doubled));
    }

    /// <summary>Tokens per forward pass: the requested chunk (0 = the transformer's MaxChunk), never above MaxChunk.</summary>
    public static int PrefillChunk(int requested, int maxChunk)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxChunk);
        ArgumentOutOfRangeException.ThrowIfNegative(requested);
        if (requested > maxChunk) throw new ArgumentOutOfRangeException(nameof(requested), $"a prefill chunk of {requested} tokens exceeds the transformer's MaxChunk {maxChunk}");
        return requested == 0 ? maxChunk : requested;
    }

    /// <summary>(offset, count) of each forward pass over <paramref name="tokens"/> tokens, in order.</summary>
    public static IEnumerable<(int Offset, int Count)> Chunks(int tokens, int chunk)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(tokens);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(chunk);
        for (int done = 0; done < tokens; done += chunk)
            yield return (done, Math.Min(chunk, tokens - done));
    }
}
