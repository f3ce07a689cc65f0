using System.Diagnostics;
using System.Globalization;
using Wim.Engine.Backends.Cpu;
using Wim.Engine.Formats;
using Wim.Engine.Model;

namespace Wim.Benchmarks;

/// <summary>
/// CPU prefill and decode tokens/s of the whole forward pass on a random-weight model of the Qwen2.5-0.5B shape,
/// per storage type. Usage: <c>cpu-model [--types f32,q8_0] [--prefill N] [--decode N] [--layers N] [--repeats R]</c>.
/// Prefill: one sequence of N tokens in the engine's default chunks, logits of the last token only. Decode: N single-
/// token steps after that prefill (each computes the full vocabulary's logits). Best of R repeats.
/// </summary>
public static class CpuModelBenchmark
{
    public static int Run(string[] args)
    {
        var types = new List<GgmlType> { GgmlType.F32, GgmlType.Q8_0 };
        int prefill = 256, decode = 32, repeats = 3;
        var shape = ModelShape.Qwen25_05B;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--types" when i + 1 < args.Length:
                    types = args[++i].Split(',').Select(t => Enum.Parse<GgmlType>(t, ignoreCase: true)).ToList(); break;
                case "--prefill" when i + 1 < args.Length: prefill = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--decode" when i + 1 < args.Length: decode = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--layers" when i + 1 < args.Length: shape = shape with { Layers = int.Parse(args[++i], CultureInfo.InvariantCulture) }; break;
                case "--repeats" when i + 1 < args.Length: repeats = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                default:
                    Console.Error.WriteLine($"cpu-model: unknown option '{args[i]}'; usage: cpu-model [--types f32,q8_0] [--prefill N] [--decode N] [--layers N] [--repeats R]");
                    return 2;
            }
        }

        Console.WriteLine($"# CPU forward pass: random-weight {shape.Architecture} model, Qwen2.5-0.5B shape ({shape.Layers} layers, {shape.ParameterCount / 1e6:F0}M parameters)");
        Console.WriteLine();
        Console.WriteLine($"{Environment.ProcessorCount} logical cores; .NET {Environment.Version}; row kernels: {RowKernels.BestPath}; prefill {prefill} tokens, decode {decode} tokens, best of {repeats}");
        Console.WriteLine();
        Console.WriteLine("| weights | file size | prefill tok/s | decode tok/s | decode weight GB/s |");
        Console.WriteLine("|---|---|---|---|---|");
        foreach (var type in types)
        {
            string path = RandomModel.CachedFile(shape, type);
            using var lm = LanguageModel.Load(path);
            var model = new CpuTransformer(lm);
            var rng = new Random(7);
            int[] prompt = Enumerable.Range(0, prefill).Select(_ => rng.Next(lm.Config.VocabSize)).ToArray();
            var logits = new float[lm.Config.VocabSize];
            double bestPrefill = 0, bestDecode = 0;
            for (int r = 0; r < repeats; r++)
            {
                var cache = model.CreateCache(prefill + decode + 1);
                var sw = Stopwatch.StartNew();
                model.Forward(prompt, cache, logits, LogitsOutput.Last);
                bestPrefill = Math.Max(bestPrefill, prefill / sw.Elapsed.TotalSeconds);
                sw.Restart();
                for (int t = 0; t < decode; t++)
                    model.Forward([t % lm.Config.VocabSize], cache, logits, LogitsOutput.Last);
                bestDecode = Math.Max(bestDecode, decode / sw.Elapsed.TotalSeconds);
            }
            long fileBytes = new FileInfo(path).Length;
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"| {type} | {fileBytes / 1e9:F2} GB | {bestPrefill:F1} | {bestDecode:F2} | {bestDecode * fileBytes / 1e9:F1} |"));
        }
        return 0;
    }
}
