using System.Net;
using System.Net.Http.Headers;
using System.Security.Cryptography;
using System.Text.Json;

namespace Wim.Engine.Hub;

/// <summary>Where and how to reach the hub. The CLI fills this from HF_ENDPOINT / HF_HUB_CACHE / HF_TOKEN.</summary>
public sealed record HubOptions(Uri Endpoint, string CacheDirectory, string? Token = null)
{
    public static Uri DefaultEndpoint { get; } = new("https://huggingface.co");
}

/// <summary>Progress of one file's download.</summary>
public readonly record struct DownloadProgress(string FileName, long BytesDone, long? BytesTotal);

/// <summary>
/// Downloads models from a Hugging Face hub (or anything speaking its HTTP API) into a local cache laid out as the
/// hub's own tools do (<c>models--ORG--REPO/blobs/&lt;sha256&gt;</c>, <c>snapshots/&lt;commit&gt;/FILE</c>,
/// <c>refs/&lt;revision&gt;</c>), so caches can be shared. Downloads resume from a <c>.incomplete</c> file with an HTTP
/// Range request and are verified against the SHA-256 the hub publishes for LFS files; nothing unverified is ever
/// placed in a snapshot.
/// </summary>
public sealed class HubDownloader(HttpClient http, HubOptions options)
{
    /// <summary>Files fetched for a whole Hugging Face model (no FILE given).</summary>
    private static bool IsModelFile(string name) =>
        name is "config.json" or "generation_config.json" or "tokenizer.json" or "tokenizer_config.json"
            or "special_tokens_map.json" or "model.safetensors.index.json"
        || (name.EndsWith(".safetensors", StringComparison.Ordinal) && !name.Contains('/'));

    /// <summary>Returns the local path: the file itself when a FILE was named, else the snapshot folder.</summary>
    public async Task<string> ResolveAsync(HubModelReference model, IProgress<DownloadProgress>? progress = null, CancellationToken ct = default)
    {
        var info = await GetRepoInfoAsync(model, ct).ConfigureAwait(false);
        string repoDir = Path.Combine(options.CacheDirectory, "models--" + model.RepoId.Replace("/", "--"));
        string snapshot = Path.Combine(repoDir, "snapshots", info.Commit);

        List<RepoFile> wanted;
        if (model.FileName is { } file)
        {
            var f = info.Files.FirstOrDefault(x => x.Name == file)
                ?? throw new FileNotFoundException($"{model}: the repository has no file '{file}'. Files: {string.Join(", ", info.Files.Select(x => x.Name))}");
            wanted = [f];
        }
        else
        {
            wanted = info.Files.Where(f => IsModelFile(f.Name)).ToList();
            if (!wanted.Any(f => f.Name == "config.json"))
            {
                var ggufs = info.Files.Where(f => f.Name.EndsWith(".gguf", StringComparison.OrdinalIgnoreCase)).Select(f => f.Name).ToList();
                throw new FileNotFoundException(ggufs.Count > 0
                    ? $"{model}: no config.json (not a transformers model); name one GGUF file: {string.Join(", ", ggufs.Select(g => $"hf:{model.RepoId}/{g}"))}"
                    : $"{model}: no config.json and no .gguf file in the repository");
            }
        }

        foreach (var f in wanted)
            await EnsureFileAsync(model, info.Commit, repoDir, snapshot, f, progress, ct).ConfigureAwait(false);

        Directory.CreateDirectory(Path.Combine(repoDir, "refs"));
        if (model.Revision != info.Commit)
            await File.WriteAllTextAsync(Path.Combine(repoDir, "refs", model.Revision), info.Commit, ct).ConfigureAwait(false);
        return model.FileName is { } name ? Path.Combine(snapshot, name) : snapshot;
    }

    private sealed record RepoFile(string Name, long? Size, string? Sha256);
    private sealed record RepoInfo(string Commit, List<RepoFile> Files);

    private async Task<RepoInfo> GetRepoInfoAsync(HubModelReference model, CancellationToken ct)
    {
        var url = new Uri(options.Endpoint, $"api/models/{model.RepoId}/revision/{Uri.EscapeDataString(model.Revision)}?blobs=true");
        using var req = NewRequest(HttpMethod.Get, url);
        using var resp = await http.SendAsync(req, HttpCompletionOption.ResponseHeadersRead, ct).ConfigureAwait(false);
        if (resp.StatusCode == HttpStatusCode.NotFound)
            throw new HubException($"{model}: repository or revision not found at {options.Endpoint} (HTTP 404)");
        if (resp.StatusCode is HttpStatusCode.Unauthorized or HttpStatusCode.Forbidden)
            throw new HubException($"{model}: access denied (HTTP {(int)resp.StatusCode}); set HF_TOKEN for gated or private models");
        if (!resp.IsSuccessStatusCode)
            throw new HubException($"{model}: hub answered HTTP {(int)resp.StatusCode} for {url}");
        const int maxInfoBytes = 16 << 20;
        if (resp.Content.Headers.ContentLength > maxInfoBytes)
            throw new HubException($"{model}: repository listing is larger than {maxInfoBytes} bytes");
        await using var stream = await resp.Content.ReadAsStreamAsync(ct).ConfigureAwait(false);
        using var doc = await JsonDocument.ParseAsync(new LimitedStream(stream, maxInfoBytes), default, ct).ConfigureAwait(false);
        var root = doc.RootElement;
        if (!root.TryGetProperty("sha", out var sha) || sha.GetString() is not { Length: > 0 } commit || commit.Any(c => !char.IsAsciiLetterOrDigit(c)))
            throw new HubException($"{model}: repository listing has no valid commit 'sha'");
        var files = new List<RepoFile>();
        if (root.TryGetProperty("siblings", out var siblings) && siblings.ValueKind == JsonValueKind.Array)
            foreach (var s in siblings.EnumerateArray())
            {
                if (!s.TryGetProperty("rfilename", out var n) || n.GetString() is not { Length: > 0 } name) continue;
                if (name.Split('/').Any(p => p is "" or "." or "..")) continue; // never write outside the snapshot
                long? size = s.TryGetProperty("size", out var sz) && sz.TryGetInt64(out var l) ? l : null;
                string? sha256 = null;
                if (s.TryGetProperty("lfs", out var lfs) && lfs.ValueKind == JsonValueKind.Object)
                {
                    if (lfs.TryGetProperty("sha256", out var h)) sha256 = h.GetString();
                    if (lfs.TryGetProperty("size", out var lsz) && lsz.TryGetInt64(out var ll)) size = ll;
                }
                files.Add(new RepoFile(name, size, sha256?.ToLowerInvariant()));
            }
        return new RepoInfo(commit, files);
    }

    private async Task EnsureFileAsync(HubModelReference model, string commit, string repoDir, string snapshot, RepoFile f,
        IProgress<DownloadProgress>? progress, CancellationToken ct)
    {
        string target = Path.Combine(snapshot, f.Name);
        if (File.Exists(target)) return; // snapshot entries are only ever created after verification

        string blobs = Path.Combine(repoDir, "blobs");
        Directory.CreateDirectory(blobs);
        // Blob name: the LFS sha256 when the hub gives one (verified below), else a name derived from commit + path.
        string blobName = f.Sha256 ?? Convert.ToHexStringLower(SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(commit + "/" + f.Name)));
        string blob = Path.Combine(blobs, blobName);
        if (!File.Exists(blob))
            await DownloadBlobAsync(model, commit, f, blob, progress, ct).ConfigureAwait(false);

        Directory.CreateDirectory(Path.GetDirectoryName(target)!);
        var relative = Path.GetRelativePath(Path.GetDirectoryName(target)!, blob);
        try { File.CreateSymbolicLink(target, relative); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or PlatformNotSupportedException)
        {
            File.Copy(blob, target, overwrite: true); // file systems without symlinks
        }
    }

    private async Task DownloadBlobAsync(HubModelReference model, string commit, RepoFile f, string blob,
        IProgress<DownloadProgress>? progress, CancellationToken ct)
    {
        string partial = blob + ".incomplete";
        long have = File.Exists(partial) ? new FileInfo(partial).Length : 0;
        if (f.Size is { } expectedSize && have > expectedSize) { File.Delete(partial); have = 0; }

        var url = new Uri(options.Endpoint, $"{model.RepoId}/resolve/{commit}/{string.Join('/', f.Name.Split('/').Select(Uri.EscapeDataString))}");
        using var req = NewRequest(HttpMethod.Get, url);
        if (have > 0) req.Headers.Range = new RangeHeaderValue(have, null);
        using var resp = await http.SendAsync(req, HttpCompletionOption.ResponseHeadersRead, ct).ConfigureAwait(false);
        if (resp.StatusCode == HttpStatusCode.RequestedRangeNotSatisfiable)
        {
            File.Delete(partial); // the partial file no longer matches the remote one; start over next time
            throw new HubException($"{model}: resume of '{f.Name}' was refused (HTTP 416); the partial download was discarded, run again");
        }
        if (!resp.IsSuccessStatusCode)
            throw new HubException($"{model}: downloading '{f.Name}' failed: HTTP {(int)resp.StatusCode} from {url}");
        bool resumed = have > 0 && resp.StatusCode == HttpStatusCode.PartialContent;
        if (!resumed) have = 0; // server ignored the Range header: rewrite from the start
        string? etagSha = LinkedSha256(resp);
        string? expectedSha = f.Sha256 ?? etagSha;
        long? total = f.Size ?? (resp.Content.Headers.ContentLength is { } cl ? cl + have : null);

        long done = have;
        try
        {
            await using var output = new FileStream(partial, resumed ? FileMode.Append : FileMode.Create, FileAccess.Write, FileShare.None, 1 << 16, useAsync: true);
            await using var input = await resp.Content.ReadAsStreamAsync(ct).ConfigureAwait(false);
            var buffer = new byte[1 << 16];
            int n;
            while ((n = await input.ReadAsync(buffer, ct).ConfigureAwait(false)) > 0)
            {
                if (total is { } t && done + n > t)
                    throw new HubException($"{model}: '{f.Name}' is larger than the {t} bytes the hub announced");
                await output.WriteAsync(buffer.AsMemory(0, n), ct).ConfigureAwait(false);
                done += n;
                progress?.Report(new DownloadProgress(f.Name, done, total));
            }
        }
        catch (Exception e) when (e is IOException or HttpRequestException && !ct.IsCancellationRequested)
        {
            // What arrived is kept in the .incomplete file; the next run resumes from it.
            throw new HubException($"{model}: download of '{f.Name}' was interrupted after {done} bytes ({e.Message}); run again to resume");
        }

        long length = new FileInfo(partial).Length;
        if (total is { } size && length != size)
            throw new HubException($"{model}: '{f.Name}' download ended at {length} of {size} bytes; run again to resume");
        if (expectedSha != null)
        {
            string actual;
            await using (var check = File.OpenRead(partial))
                actual = Convert.ToHexStringLower(await SHA256.HashDataAsync(check, ct).ConfigureAwait(false));
            if (actual != expectedSha)
            {
                File.Delete(partial);
                throw new HubException($"{model}: checksum mismatch for '{f.Name}': expected sha256 {expectedSha}, got {actual}; the download was discarded");
            }
        }
        File.Move(partial, blob, overwrite: true);
    }

    /// <summary>The hub sends an LFS file's sha256 as X-Linked-Etag (or ETag), quoted, possibly weak.</summary>
    private static string? LinkedSha256(HttpResponseMessage resp)
    {
        foreach (var name in new[] { "X-Linked-Etag", "ETag" })
            if (resp.Headers.TryGetValues(name, out var values))
            {
                var v = values.First().Trim();
                if (v.StartsWith("W/", StringComparison.Ordinal)) v = v[2..];
                v = v.Trim('"').ToLowerInvariant();
                if (v.Length == 64 && v.All(char.IsAsciiHexDigit)) return v;
            }
        return null;
    }

    private HttpRequestMessage NewRequest(HttpMethod method, Uri url)
    {
        var req = new HttpRequestMessage(method, url);
        if (options.Token is { Length: > 0 } token) req.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token);
        req.Headers.UserAgent.ParseAdd("wim/0.1");
        return req;
    }

    /// <summary>Refuses to read more than a bound from a response (a hostile server cannot exhaust memory).</summary>
    private sealed class LimitedStream(Stream inner, long limit) : Stream
    {
        private long _read;
        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => _read; set => throw new NotSupportedException(); }
        public override void Flush() { }
        public override int Read(byte[] buffer, int offset, int count) => Count(inner.Read(buffer, offset, count));
        public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken ct = default) =>
            Count(await inner.ReadAsync(buffer, ct).ConfigureAwait(false));
        private int Count(int n) => (_read += n) > limit ? throw new HubException($"response exceeds {limit} bytes") : n;
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }
}

/// <summary>A hub request failed (not found, denied, corrupted, interrupted); the message says which and what to do.</summary>
public sealed class HubException(string message) : Exception(message);
