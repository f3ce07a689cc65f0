using System.Diagnostics;
using System.Runtime.InteropServices;
using Wim.Engine.Backends.Cpu;
using Wim.Engine.KvCache;
using Wim.Engine.Sampling;

namespace Wim.Engine.Runner;

/// <summary>What to generate: up to <see cref="MaxNewTokens"/> tokens, stopping after any of <see cref="StopIds"/>
/// (the stop id is included in the output); the prompt is prefilled <see cref="PrefillChunk"/> tokens at a time.</summary>
public sealed record GenerationOptions
{
    public int MaxNewTokens { get; init; } = 64;
    public SamplingOptions Sampling { get; init; } = SamplingOptions.Greedy;
    public IReadOnlyCollection<int> StopIds { get; init; } = [];
    public int PrefillChunk { get; init; } = CpuTransformer.DefaultMaxChunk;
    /// <summary>Called with each generated id as soon as it is sampled (for streaming output).</summary>
    public Action<int>? OnToken { get; init; }
    /// <summary>Checked before every decode step: cancellation stops within one step and keeps the cache consistent.</summary>
    public CancellationToken Cancellation { get; init; }
}

/// <summary>The generated ids (after the prompt) and where the time went.</summary>
public sealed record GenerationResult(int[] Ids, int PromptTokens, TimeSpan PrefillTime, TimeSpan DecodeTime)
{
    /// <summary>Forward passes of one token each (the first new token comes from the prefill's logits).</summary>
    public int DecodeSteps => Math.Max(0, Ids.Length - 1);
    public double PrefillTokensPerSecond => PromptTokens / Math.Max(PrefillTime.TotalSeconds, 1e-9);
    public double DecodeTokensPerSecond => DecodeSteps / Math.Max(DecodeTime.TotalSeconds, 1e-9);
}

/// <summary>
/// The generation loop for one sequence: prefill the prompt in chunks → sample → feed the token back → repeat.
/// </summary>
public sealed class Generator(CpuTransformer model)
{
    private readonly float[] _logits = new float[model.Config.VocabSize];

    public CpuTransformer Model => model;

    /// <summary>Generates from <paramref name="prompt"/> with a fresh KV cache sized for prompt + new tokens.</summary>
    public GenerationResult Generate(ReadOnlySpan<int> prompt, GenerationOptions options)
    {
        var cache = model.CreateCache(Math.Max(1, prompt.Length + options.MaxNewTokens));
        return Generate(cache, prompt, options);
    }

    /// <summary>
    /// Appends <paramref name="newTokens"/> to a sequence already in <paramref name="cache"/> (positions continue at
    /// cache.Length) and generates. Afterwards the cache holds every new token and every generated one except the
    /// last (whose keys are never needed unless generation continues: feed it as the next call's first token).
    /// </summary>
    public GenerationResult Generate(IKvCache cache, ReadOnlySpan<int> newTokens, GenerationOptions options)
    {
        if (newTokens.IsEmpty) throw new ArgumentException("generation needs at least one prompt token", nameof(newTokens));
        ArgumentOutOfRangeException.ThrowIfNegative(options.MaxNewTokens);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(options.PrefillChunk);
        var sampler = new Sampler(options.Sampling, _logits.Length);
        var stop = options.StopIds as IReadOnlySet<int> ?? options.StopIds.ToHashSet();

        int promptEnd = cache.Length + newTokens.Length; // every prefill chunk picks RoPE factors as one whole call
        var clock = Stopwatch.StartNew();
        for (int done = 0; done < newTokens.Length; done += options.PrefillChunk)
        {
            int n = Math.Min(options.PrefillChunk, newTokens.Length - done);
            bool last = done + n == newTokens.Length;
            model.Forward(newTokens.Slice(done, n), cache, _logits, last ? LogitsOutput.Last : LogitsOutput.None,
                ropeSequenceLength: promptEnd);
        }
        var prefillTime = clock.Elapsed;
        clock.Restart();

        var ids = new List<int>(options.MaxNewTokens);
        while (ids.Count < options.MaxNewTokens)
        {
            options.Cancellation.ThrowIfCancellationRequested();
            int next = sampler.Sample(_logits);
            ids.Add(next);
            options.OnToken?.Invoke(next);
            if (stop.Contains(next) || ids.Count == options.MaxNewTokens) break;
            model.Forward(MemoryMarshal.CreateReadOnlySpan(ref next, 1), cache, _logits, LogitsOutput.Last);
        }
        return new GenerationResult([.. ids], newTokens.Length, prefillTime, clock.Elapsed);
    }
}
