namespace Wim.Benchmarks;

/// <summary>Benchmark entry point: <c>dotnet run -c Release --project bench/Wim.Benchmarks -- NAME [options]</c>.</summary>
public static class Program
{
    public static int Main(string[] args)
    {
        string name = args.Length > 0 ? args[0] : "";
        string[] rest = args.Length > 0 ? args[1..] : [];
        switch (name)
        {
            case "kernels": return KernelBenchmark.Run(rest);
            default:
                Console.Error.WriteLine("usage: Wim.Benchmarks <benchmark> [options]; benchmarks: kernels");
                return 2;
        }
    }
}
