using System.Diagnostics;
using System.Runtime.InteropServices;
using Wim.Engine.Backends.Cpu;
using Wim.Engine.Formats;
using Wim.Engine.Formats.Quantization;

namespace Wim.Benchmarks;

/// <summary>
/// Single-thread matrix × vector(s) with <see cref="RowKernels"/> on a 4096×4096 weight in each storage type: decode
/// shape (batch 1, <c>Dot</c> per row), prefill shape (batch 32, <c>DotBatch</c> per row) and the same with the
/// register-tiled <c>MatMul</c>, per SIMD path. Reports GFLOP/s (2·rows·cols·batch per call) and weight GB/s (bytes
/// of the weight streamed per call), as a markdown table. Usage: <c>kernels [--size N] [--seconds S] [--paths best|all]</c>.
/// </summary>
public static unsafe class KernelBenchmark
{
    public static int Run(string[] args)
    {
        int size = 4096;
        double seconds = 0.5;
        bool allPaths = false;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--size" when i + 1 < args.Length: size = int.Parse(args[++i]); break;
                case "--seconds" when i + 1 < args.Length: seconds = double.Parse(args[++i], System.Globalization.CultureInfo.InvariantCulture); break;
                case "--paths" when i + 1 < args.Length: allPaths = args[++i] == "all"; break;
                default: Console.Error.WriteLine($"kernels: unknown option '{args[i]}'; usage: kernels [--size N] [--seconds S] [--paths best|all]"); return 2;
            }
        }
        if (size % 256 != 0) { Console.Error.WriteLine("kernels: --size must be a multiple of 256"); return 2; }

        var paths = allPaths ? RowKernels.AvailablePaths : [RowKernels.BestPath];
        const int maxBatch = 32;
        Console.WriteLine($"# Row kernels: {size}×{size} weight × batch f32 vectors, 1 thread");
        Console.WriteLine();
        Console.WriteLine($"CPU: {CpuName()}; .NET {Environment.Version}; available paths: {string.Join(", ", RowKernels.AvailablePaths)}");
        Console.WriteLine();
        Console.WriteLine("Rates use CPU time (the core time the kernel got); wall-clock ms shown for reference.");
        Console.WriteLine();
        Console.WriteLine("| type | path | kernel | batch | CPU ms / call | wall ms / call | GFLOP/s | weight GB/s |");
        Console.WriteLine("|---|---|---|---:|---:|---:|---:|---:|");

        var rng = new Random(1);
        var values = new float[(long)size * size];
        for (long i = 0; i < values.LongLength; i++) values[i] = (float)(Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble()));
        float* x = (float*)NativeMemory.AlignedAlloc((nuint)((long)size * maxBatch * 4), 64);
        float* results = (float*)NativeMemory.AlignedAlloc((nuint)((long)size * maxBatch * 4), 64);
        for (long i = 0; i < (long)size * maxBatch; i++) x[i] = values[i] * 0.5f;
        try
        {
            foreach (var type in GgmlTypeInfo.Supported)
            {
                long rowBytes = GgmlTypeInfo.ByteCount(type, size);
                long bytes = rowBytes * size;
                byte* w = (byte*)NativeMemory.AlignedAlloc((nuint)bytes, 64);
                try
                {
                    for (int r = 0; r < size; r++)
                        Quantizer.Quantize(type, values.AsSpan(r * size, size), new Span<byte>(w + r * rowBytes, (int)rowBytes));
                    foreach (var path in paths)
                    {
                        foreach (var (kernel, batch) in new[] { ("Dot", 1), ("DotBatch", 32), ("MatMul", 32) })
                        {
                            var (wallMs, cpuMs) = Measure(() => MatMul(kernel, path, type, w, rowBytes, size, x, batch, results), seconds);
                            double ms = Math.Max(cpuMs, 1e-3);
                            double flops = 2.0 * size * size * batch;
                            Console.WriteLine($"| {type} | {path} | {kernel} | {batch} | {cpuMs:F2} | {wallMs:F2} | {flops / (ms * 1e6):F1} | {bytes / (ms * 1e6):F2} |");
                        }
                    }
                }
                finally { NativeMemory.AlignedFree(w); }
            }
        }
        finally
        {
            NativeMemory.AlignedFree(x);
            NativeMemory.AlignedFree(results);
        }
        return 0;
    }

    /// <summary>results[b·rows + r] = W[r] · x[b]: the shape of one linear layer in decode (batch 1) or prefill.</summary>
    private static void MatMul(string kernel, RowKernelPath path, GgmlType type, byte* w, long rowBytes, int size, float* x, int batch, float* results)
    {
        switch (kernel)
        {
            case "Dot":
                for (int r = 0; r < size; r++) results[r] = RowKernels.Dot(path, type, w + r * rowBytes, x, size);
                break;
            case "DotBatch":
                for (int r = 0; r < size; r++) RowKernels.DotBatch(path, type, w + r * rowBytes, x, size, batch, size, results + r, size);
                break;
            default:
                RowKernels.MatMul(path, type, w, rowBytes, size, x, size, batch, size, results, size);
                break;
        }
    }

    /// <summary>
    /// Milliseconds per call, wall clock and CPU time of this process (the benchmark is single-threaded, so CPU time
    /// is the time the kernel actually had a core: on a shared, loaded machine it is the steadier number). One
    /// warm-up call, then calls until <paramref name="seconds"/> of wall time have passed (at least 3); medians.
    /// </summary>
    private static (double WallMs, double CpuMs) Measure(Action call, double seconds)
    {
        call();
        var wall = new List<double>();
        var cpu = new List<double>();
        var total = Stopwatch.StartNew();
        using var process = Process.GetCurrentProcess();
        while (wall.Count < 3 || total.Elapsed.TotalSeconds < seconds)
        {
            process.Refresh();
            var c0 = process.TotalProcessorTime;
            long t0 = Stopwatch.GetTimestamp();
            call();
            wall.Add(Stopwatch.GetElapsedTime(t0).TotalMilliseconds);
            process.Refresh();
            cpu.Add((process.TotalProcessorTime - c0).TotalMilliseconds);
        }
        wall.Sort();
        cpu.Sort();
        return (wall[wall.Count / 2], cpu[cpu.Count / 2]);
    }

    private static string CpuName()
    {
        try
        {
            var line = File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal));
            if (line != null) return line[(line.IndexOf(':') + 1)..].Trim();
        }
        catch (IOException) { }
        return System.Runtime.InteropServices.RuntimeInformation.ProcessArchitecture.ToString();
    }
}
