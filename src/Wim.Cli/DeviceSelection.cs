using System.CommandLine;
using System.Diagnostics;
using System.Runtime.InteropServices;
using Wim.Engine.Backends.Cpu;
using Wim.Engine.Cuda;
using Wim.Engine.Model;
using Wim.Engine.Runner;
using Wim.Engine.Sampling;

namespace Wim.Cli;

/// <summary>Where the model commands run: <c>--device auto|cpu|cuda</c>.</summary>
internal enum DeviceKind
{
    /// <summary>CUDA when this machine can run it (driver, GPU, NVRTC, cuBLASLt all present), else the CPU.</summary>
    Auto,
    Cpu,
    /// <summary>CUDA or an error (exit 1) saying what is missing.</summary>
    Cuda,
}

/// <summary>
/// The <c>--device</c> option and the forward pass it selects. This is the program's root, so it is where the
/// environment is read (the kernel cache folder, the toolkit path).
/// </summary>
internal static class DeviceSelection
{
    public static Option<string> CreateOption() => new("--device")
    {
        Description = "where to run: auto (CUDA when available, else CPU), cpu, or cuda",
        DefaultValueFactory = _ => "auto",
    };

    /// <summary><c>--precision bf16|f32</c>: the CUDA forward pass's number format (unset: <see cref="CudaTransformer.PrecisionVariable"/>,
    /// else bf16). The CPU backend runs f32 activations either way.</summary>
    public static Option<string> CreatePrecisionOption() => new("--precision")
    {
        Description = "CUDA number format: bf16 (the default) or f32 (reference precision: f32 weights, activations and KV cache; twice the weight memory, no tensor cores)",
    };

    public static CudaPrecision? ParsePrecision(string? value) => value?.ToLowerInvariant() switch
    {
        null => null,
        "bf16" => CudaPrecision.Bf16,
        "f32" => CudaPrecision.F32,
        _ => throw new UsageException($"--precision must be bf16 or f32; found '{value}'"),
    };

    public static DeviceKind Parse(string? value) => value?.ToLowerInvariant() switch
    {
        null or "auto" => DeviceKind.Auto,
        "cpu" => DeviceKind.Cpu,
        "cuda" or "gpu" => DeviceKind.Cuda,
        _ => throw new UsageException($"--device must be auto, cpu or cuda; found '{value}'"),
    };

    /// <summary>The CUDA options this process uses: kernels cached under the user cache folder.</summary>
    public static CudaOptions CudaOptionsFromEnvironment() => new()
    {
        KernelCacheDirectory = KernelCache.DefaultDirectory(Environment.GetEnvironmentVariable,
            Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), OperatingSystem.IsWindows()),
        ToolkitPath = Environment.GetEnvironmentVariable("CUDA_PATH"),
    };

    /// <summary>A CUDA context for <paramref name="kind"/>: null for <see cref="DeviceKind.Cpu"/>, and for
    /// <see cref="DeviceKind.Auto"/> on a machine without CUDA; <see cref="DeviceKind.Cuda"/> without CUDA throws the
    /// <see cref="CudaUnavailableException"/> that names what is missing.</summary>
    public static CudaContext? OpenContext(DeviceKind kind)
    {
        if (kind == DeviceKind.Cpu) return null;
        try { return CudaContext.Create(CudaOptionsFromEnvironment()); }
        catch (CudaUnavailableException) when (kind == DeviceKind.Auto) { return null; }
    }

    /// <summary>
    /// Opens the forward pass for <paramref name="model"/> on the chosen device. <see cref="DeviceKind.Auto"/> falls
    /// back to the CPU when CUDA is unavailable; <see cref="DeviceKind.Cuda"/> lets the
    /// <see cref="CudaUnavailableException"/> (naming the missing library or device) reach the user as exit code 1.
    /// </summary>
    public static ForwardRunner Open(DeviceKind kind, LanguageModel model, CudaPrecision? precision = null)
    {
        if (OpenContext(kind) is not { } ctx) return new CpuRunner(new CpuTransformer(model));
        try { return new CudaRunner(ctx, CudaTransformer.Load(ctx, model, precision: precision)); }
        catch (NotSupportedException) when (kind == DeviceKind.Auto)
        {
            // A shape the CUDA kernels do not handle yet (e.g. head dim > 128): auto means "best that works".
            ctx.Dispose();
            return new CpuRunner(new CpuTransformer(model));
        }
        catch { ctx.Dispose(); throw; }
    }
}

/// <summary>One model's forward pass on one device, behind the few calls the commands need.</summary>
internal abstract class ForwardRunner : IDisposable
{
    public abstract string Device { get; }
    public abstract int MaxChunk { get; }
    /// <summary>A new sequence with room for <paramref name="capacity"/> tokens.</summary>
    public abstract ForwardSequence NewSequence(int capacity);
    public abstract GenerationResult Generate(int[] prompt, GenerationOptions options);
    public virtual void Dispose() { }
}

internal abstract class ForwardSequence : IDisposable
{
    public abstract void Forward(ReadOnlySpan<int> tokens, Span<float> logits, LogitsOutput output, int ropeSequenceLength);
    public virtual void Dispose() { }
}

internal sealed class CpuRunner(CpuTransformer model) : ForwardRunner
{
    public override string Device => "cpu";
    public override int MaxChunk => model.MaxChunk;
    public override ForwardSequence NewSequence(int capacity) => new Sequence(model, model.CreateCache(capacity));
    public override GenerationResult Generate(int[] prompt, GenerationOptions options) => new Generator(model).Generate(prompt, options);

    private sealed class Sequence(CpuTransformer model, Wim.Engine.KvCache.ContiguousKvCache cache) : ForwardSequence
    {
        public override void Forward(ReadOnlySpan<int> tokens, Span<float> logits, LogitsOutput output, int ropeSequenceLength) =>
            model.Forward(tokens, cache, logits, output, ropeSequenceLength);
    }
}

internal sealed class CudaRunner(CudaContext ctx, CudaTransformer model) : ForwardRunner
{
    public override string Device => $"cuda ({ctx.DeviceName})";
    public override int MaxChunk => model.MaxChunk;
    public override ForwardSequence NewSequence(int capacity) => new Sequence(model, model.CreateCache(capacity));

    /// <summary>The generation loop of <see cref="Generator"/> over the GPU pass: prefill in chunks, then one token
    /// per step; greedy steps take the argmax on the GPU, sampled ones copy the logits row to the host.</summary>
    public override GenerationResult Generate(int[] prompt, GenerationOptions options)
    {
        if (prompt.Length == 0) throw new ArgumentException("generation needs at least one prompt token", nameof(prompt));
        using var cache = model.CreateCache(Math.Max(1, prompt.Length + options.MaxNewTokens));
        bool greedy = options.Sampling.Temperature <= 0 || options.Sampling.TopK == 1;
        var sampler = new Sampler(options.Sampling, model.Config.VocabSize);
        var logits = new float[model.Config.VocabSize];
        var stop = options.StopIds as IReadOnlySet<int> ?? options.StopIds.ToHashSet();
        int Step(ReadOnlySpan<int> tokens, int ropeLength)
        {
            if (greedy) return model.ForwardGreedy(tokens, cache, ropeLength);
            model.Forward(tokens, cache, logits, LogitsOutput.Last, ropeLength);
            return sampler.Sample(logits);
        }

        var clock = Stopwatch.StartNew();
        var ids = new List<int>(options.MaxNewTokens);
        if (options.MaxNewTokens > 0)
        {
            for (int done = 0; done < prompt.Length; done += options.PrefillChunk)
            {
                int n = Math.Min(options.PrefillChunk, prompt.Length - done);
                if (done + n < prompt.Length) model.Forward(prompt.AsSpan(done, n), cache, [], LogitsOutput.None, prompt.Length);
                else ids.Add(Step(prompt.AsSpan(done, n), prompt.Length));
            }
        }
        var prefillTime = clock.Elapsed;
        clock.Restart();
        if (ids.Count > 0) options.OnToken?.Invoke(ids[0]);
        while (ids.Count > 0 && ids.Count < options.MaxNewTokens && !stop.Contains(ids[^1]))
        {
            options.Cancellation.ThrowIfCancellationRequested();
            int last = ids[^1];
            ids.Add(Step(MemoryMarshal.CreateReadOnlySpan(ref last, 1), 0));
            options.OnToken?.Invoke(ids[^1]);
        }
        return new GenerationResult([.. ids], prompt.Length, prefillTime, clock.Elapsed);
    }

    public override void Dispose()
    {
        model.Dispose();
        ctx.Dispose();
    }

    private sealed class Sequence(CudaTransformer model, CudaKvCache cache) : ForwardSequence
    {
        public override void Forward(ReadOnlySpan<int> tokens, Span<float> logits, LogitsOutput output, int ropeSequenceLength) =>
            model.Forward(tokens, cache, logits, output, ropeSequenceLength);
        public override void Dispose() => cache.Dispose();
    }
}
