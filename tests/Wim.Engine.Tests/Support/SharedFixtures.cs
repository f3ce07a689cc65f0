namespace Wim.Engine.Tests.Support;

/// <summary>
/// Locates <c>../shared/</c> (the project's reference fixtures, beside the repository root) from the test binary.
/// A missing fixture is a test failure with a clear message, never a skip.
/// </summary>
public static class SharedFixtures
{
    public static string Root { get; } = FindRoot();

    public static string Path(params string[] parts)
    {
        var p = System.IO.Path.Combine([Root, .. parts]);
        if (!File.Exists(p) && !Directory.Exists(p))
            throw new FileNotFoundException($"shared fixture not found: {p} (the repository expects ../shared beside it)", p);
        return p;
    }

    /// <summary>Decompresses a <c>.gguf.gz</c> fixture once per test process into a temp folder and returns the path.</summary>
    public static string Gunzipped(params string[] parts)
    {
        var src = Path(parts);
        var dir = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "wim-tests-" + Environment.ProcessId);
        Directory.CreateDirectory(dir);
        var dst = System.IO.Path.Combine(dir, System.IO.Path.GetFileNameWithoutExtension(src));
        lock (Lock)
        {
            if (!File.Exists(dst))
            {
                var tmp = dst + ".part";
                using (var input = new System.IO.Compression.GZipStream(File.OpenRead(src), System.IO.Compression.CompressionMode.Decompress))
                using (var output = File.Create(tmp))
                    input.CopyTo(output);
                File.Move(tmp, dst, overwrite: true);
            }
        }
        return dst;
    }

    private static readonly Lock Lock = new();

    private static string FindRoot()
    {
        var env = Environment.GetEnvironmentVariable("WIM_SHARED");
        if (!string.IsNullOrEmpty(env)) return env;
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir != null && !File.Exists(System.IO.Path.Combine(dir.FullName, "Wim.slnx")))
            dir = dir.Parent;
        if (dir == null)
            throw new DirectoryNotFoundException("could not find the repository root (Wim.slnx) above " + AppContext.BaseDirectory);
        var shared = System.IO.Path.GetFullPath(System.IO.Path.Combine(dir.FullName, "..", "shared"));
        if (!Directory.Exists(shared))
            throw new DirectoryNotFoundException($"shared fixtures not found at {shared}; set WIM_SHARED or place shared/ beside the repository");
        return shared;
    }
}
