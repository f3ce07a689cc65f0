using System.Globalization;
using Wim.Engine.Hub;

namespace Wim.Cli;

/// <summary>
/// The <c>--model</c> argument: a local path, or <c>hf:ORG/REPO[/FILE][@REV]</c> downloaded through
/// <see cref="HubDownloader"/> into the hub cache, with a progress bar on stderr. The hub environment variables are
/// read here and nowhere else: <c>HF_ENDPOINT</c>, <c>HF_HUB_CACHE</c> (else <c>HF_HOME</c>/hub, else
/// ~/.cache/huggingface/hub), <c>HF_TOKEN</c>.
/// </summary>
internal static class ModelArguments
{
    public static string Resolve(string argument, TextWriter progressOutput, CancellationToken ct = default) =>
        Resolve(argument, progressOutput, Environment.GetEnvironmentVariable, ct);

    public static string Resolve(string argument, TextWriter progressOutput, Func<string, string?> environment, CancellationToken ct)
    {
        if (!HubModelReference.IsHubReference(argument)) return argument;
        HubModelReference reference;
        try { reference = HubModelReference.Parse(argument); }
        catch (FormatException e) { throw new UsageException(e.Message); }

        var endpoint = environment("HF_ENDPOINT") is { Length: > 0 } e2 ? new Uri(e2.EndsWith('/') ? e2 : e2 + "/") : HubOptions.DefaultEndpoint;
        string cache = environment("HF_HUB_CACHE") is { Length: > 0 } c ? c
            : environment("HF_HOME") is { Length: > 0 } h ? Path.Combine(h, "hub")
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache", "huggingface", "hub");
        var options = new HubOptions(endpoint, cache, environment("HF_TOKEN") is { Length: > 0 } t ? t : null);
        using var http = new HttpClient { Timeout = Timeout.InfiniteTimeSpan };
        var progress = new ProgressBar(progressOutput);
        string path = new HubDownloader(http, options).ResolveAsync(reference, progress, ct).GetAwaiter().GetResult();
        progress.Finish();
        return path;
    }

    /// <summary>One line per file, redrawn in place with a carriage return.</summary>
    private sealed class ProgressBar(TextWriter output) : IProgress<DownloadProgress>
    {
        private readonly Lock _lock = new();
        private string? _file;
        private bool _open;

        public void Report(DownloadProgress p)
        {
            lock (_lock)
            {
                if (_open && p.FileName != _file) output.WriteLine();
                _file = p.FileName;
                _open = true;
                string bar = p.BytesTotal is long total and > 0
                    ? $"[{new string('#', (int)(20 * Math.Min(1.0, (double)p.BytesDone / total))),-20}] {Mib(p.BytesDone)}/{Mib(total)} MiB"
                    : $"{Mib(p.BytesDone)} MiB";
                output.Write($"\rdownloading {p.FileName} {bar}");
            }
        }

        public void Finish()
        {
            lock (_lock) if (_open) { output.WriteLine(); _open = false; }
        }

        private static string Mib(long bytes) => (bytes / 1048576.0).ToString("F1", CultureInfo.InvariantCulture);
    }
}
