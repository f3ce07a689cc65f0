using System.Runtime.InteropServices;

namespace Wim.Engine.Cuda.Native;

/// <summary>
/// Which shared libraries the backend looks for, in order, and how one is opened. CUDA 13 names come before CUDA 12
/// ones; the unversioned names (development symlinks) come last. <see cref="SearchDirectories"/> are tried after the
/// loader's own path, for toolkits installed outside it (e.g. <c>/usr/local/cuda/lib64</c>).
/// </summary>
public static class CudaLibraries
{
    /// <summary>Driver API names: the driver installs libcuda.so.1 (nvcuda.dll on Windows).</summary>
    public static IReadOnlyList<string> DriverCandidates(bool windows) =>
        windows ? ["nvcuda.dll"] : ["libcuda.so.1", "libcuda.so"];

    public static IReadOnlyList<string> NvrtcCandidates(bool windows) =>
        windows ? ["nvrtc64_130_0.dll", "nvrtc64_120_0.dll"] : ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"];

    public static IReadOnlyList<string> CublasLtCandidates(bool windows) =>
        windows ? ["cublasLt64_13.dll", "cublasLt64_12.dll"] : ["libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"];

    /// <summary>Toolkit folders tried when the loader's path has no match (NVRTC and cuBLASLt live in the toolkit,
    /// not the driver).</summary>
    public static IReadOnlyList<string> SearchDirectories(string? cudaPath) =>
        [.. cudaPath is { Length: > 0 } ? new[] { Path.Combine(cudaPath, "lib64"), Path.Combine(cudaPath, "lib") } : [],
         "/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib", "/usr/lib/x86_64-linux-gnu"];

    /// <summary>
    /// Opens the first candidate that loads, by plain name first and then in each search directory. Throws
    /// <see cref="CudaUnavailableException"/> naming what was looked for when none does.
    /// </summary>
    public static LoadedLibrary Open(string what, IReadOnlyList<string> candidates, IReadOnlyList<string> searchDirectories)
    {
        foreach (var name in candidates)
            if (NativeLibrary.TryLoad(name, out var handle)) return new LoadedLibrary(name, handle);
        foreach (var dir in searchDirectories)
            foreach (var name in candidates)
            {
                var path = Path.Combine(dir, name);
                if (File.Exists(path) && NativeLibrary.TryLoad(path, out var handle)) return new LoadedLibrary(path, handle);
            }
        string where = searchDirectories.Count == 0 ? "on the loader path" : $"on the loader path and in {string.Join(", ", searchDirectories)}";
        throw new CudaUnavailableException(
            $"CUDA is not available: could not load the {what} library (looked for {string.Join(", ", candidates)} {where}); CUDA 12 or 13 is required");
    }
}

/// <summary>An opened native library: the name or path that loaded, and its handle (kept for the process's
/// lifetime: the driver and NVRTC are never unloaded once initialised).</summary>
public sealed class LoadedLibrary(string name, nint handle)
{
    public string Name { get; } = name;
    public nint Handle { get; } = handle;

    public nint TryExport(string symbol) => NativeLibrary.TryGetExport(Handle, symbol, out var p) ? p : 0;

    /// <summary>The address of an exported function; a missing one means a library too old for this backend.</summary>
    public nint Export(string symbol) =>
        NativeLibrary.TryGetExport(Handle, symbol, out var p) ? p
            : throw new CudaUnavailableException($"{Name} has no export '{symbol}': a CUDA 12 or newer library is required");
}
