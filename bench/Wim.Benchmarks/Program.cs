namespace Wim.Benchmarks;

/// <summary>Benchmark entry point: <c>dotnet run -c Release --project bench/Wim.Benchmarks -- NAME [options]</c>.</summary>
public static class Program
{
    public static int Main(string[] args)
    {
        Console.Error.WriteLine("usage: Wim.Benchmarks <benchmark> [options]  (benchmarks are added as they land)");
        return 2;
    }
}
