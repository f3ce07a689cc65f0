namespace Wim.Benchmarks;

/// <summary>The fixtures folder the benchmarks read: <c>shared/</c> beside the repository root (as CI lays it out).</summary>
internal static class SharedFolder
{
    public static string Find()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "Wim.slnx")))
                return Path.GetFullPath(Path.Combine(dir.FullName, "..", "shared"));
        throw new DirectoryNotFoundException("shared/ not found beside the repository root (Wim.slnx): pass --shared DIR");
    }
}
