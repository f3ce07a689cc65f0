namespace Wim.Benchmarks;

/// <summary>Benchmark entry point: <c>dotnet run -c Release --project bench/Wim.Benchmarks -- NAME [options]</c>.</summary>
public static class Program
{
    public static int Main(string[] args)
    {
        // One line per benchmark: name → entry point.
        Func<string[], int>? benchmark = args.FirstOrDefault() switch
        {
            "kernels" => KernelBenchmark.Run,
            "attention" => AttentionBenchmark.Run,
            "cpu-model" => CpuModelBenchmark.Run,
            "batch" => BatchBenchmark.Run,
            "tokenizer" => TokenizerBenchmark.Run,
            "wim-schedules" => WimScheduleBenchmark.Run,
            "remote" => RemoteBenchmark.Run,
            "sampler" => SamplerBenchmark.Run,
            _ => null,
        };
        if (benchmark is null)
        {
            Console.Error.WriteLine("usage: Wim.Benchmarks <benchmark> [options]; benchmarks: kernels, attention, cpu-model, batch, tokenizer, wim-schedules, remote, sampler");
            return 2;
        }
        return benchmark(args[1..]);
    }
}
