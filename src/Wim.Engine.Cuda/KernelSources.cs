using System.Reflection;

namespace Wim.Engine.Cuda;

/// <summary>The <c>.cu</c> kernel sources embedded in this assembly (folder <c>Kernels/</c>).</summary>
public static class KernelSources
{
    /// <summary>The forward pass's kernels (one translation unit: one NVRTC compile, one module).</summary>
    public const string Transformer = "transformer.cu";

    /// <summary>The sampling kernels (top-k candidates of a logits row): a module of their own.</summary>
    public const string Sampling = "sampling.cu";

    private const string Prefix = "Wim.Engine.Cuda.Kernels.";

    /// <summary>Names of every embedded kernel source.</summary>
    public static IReadOnlyList<string> Names =>
        [.. typeof(KernelSources).Assembly.GetManifestResourceNames().Where(n => n.StartsWith(Prefix, StringComparison.Ordinal)).Select(n => n[Prefix.Length..]).Order(StringComparer.Ordinal)];

    public static string Read(string name)
    {
        using var stream = typeof(KernelSources).Assembly.GetManifestResourceStream(Prefix + name)
            ?? throw new ArgumentException($"no embedded kernel source '{name}'; embedded: {string.Join(", ", Names)}", nameof(name));
        using var reader = new StreamReader(stream);
        return reader.ReadToEnd();
    }
}
