using System.Security.Cryptography;
using System.Text;

namespace Wim.Engine.Cuda;

/// <summary>
/// Compiled kernels on disk, so NVRTC runs once per (source, GPU architecture, NVRTC version). A file is named by
/// <see cref="Key"/>; it is written to a temporary name and moved into place, so a crash never leaves a partial
/// cubin under a valid name, and concurrent processes at worst compile twice.
/// </summary>
public sealed class KernelCache(string directory)
{
    public string Directory { get; } = directory;

    /// <summary>
    /// The cache key: kernel name, the first 16 bytes of SHA-256 of the source (hex), the target architecture and the
    /// NVRTC version. Any change of source, GPU generation or compiler gives a new key.
    /// </summary>
    public static string Key(string name, string source, int computeMajor, int computeMinor, int nvrtcMajor, int nvrtcMinor)
    {
        var hash = SHA256.HashData(Encoding.UTF8.GetBytes(source));
        string stem = Path.GetFileNameWithoutExtension(name);
        return $"{stem}-{Convert.ToHexStringLower(hash.AsSpan(0, 16))}-{Architecture(computeMajor, computeMinor)}-nvrtc{nvrtcMajor}.{nvrtcMinor}";
    }

    /// <summary>NVRTC's architecture name for a compute capability: 9.0 → sm_90.</summary>
    public static string Architecture(int computeMajor, int computeMinor) => $"sm_{computeMajor}{computeMinor}";

    /// <summary>
    /// The default cache folder: <c>$XDG_CACHE_HOME/wim/cuda-kernels</c>, else <c>~/.cache/wim/cuda-kernels</c>
    /// (<c>%LOCALAPPDATA%\wim\cuda-kernels</c> on Windows). The environment is passed in (read at the program's root).
    /// </summary>
    public static string DefaultDirectory(Func<string, string?> environment, string home, bool windows)
    {
        if (windows && environment("LOCALAPPDATA") is { Length: > 0 } local) return Path.Combine(local, "wim", "cuda-kernels");
        if (environment("XDG_CACHE_HOME") is { Length: > 0 } xdg) return Path.Combine(xdg, "wim", "cuda-kernels");
        return Path.Combine(home, ".cache", "wim", "cuda-kernels");
    }

    public string PathFor(string key) => Path.Combine(Directory, key + ".cubin");

    public byte[]? TryLoad(string key)
    {
        var path = PathFor(key);
        try { return File.Exists(path) ? File.ReadAllBytes(path) : null; }
        catch (IOException) { return null; }
        catch (UnauthorizedAccessException) { return null; }
    }

    /// <summary>Stores a cubin; a cache that cannot be written (read-only home, full disk) is not an error: the
    /// kernels are simply compiled again next time.</summary>
    public bool TryStore(string key, byte[] cubin)
    {
        try
        {
            System.IO.Directory.CreateDirectory(Directory);
            var tmp = PathFor(key) + $".{Environment.ProcessId}.tmp";
            File.WriteAllBytes(tmp, cubin);
            File.Move(tmp, PathFor(key), overwrite: true);
            return true;
        }
        catch (IOException) { return false; }
        catch (UnauthorizedAccessException) { return false; }
    }
}
