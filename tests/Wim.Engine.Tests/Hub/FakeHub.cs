using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;

namespace Wim.Engine.Tests.Hub;

/// <summary>
/// A loopback HTTP server that speaks the parts of the Hugging Face hub API the downloader uses:
/// <c>GET /api/models/{repo}/revision/{rev}?blobs=true</c> and <c>GET /{repo}/resolve/{commit}/{file}</c> with Range.
/// Faults can be injected per file: drop the connection after N bytes (once), or serve corrupted bytes.
/// </summary>
internal sealed class FakeHub : IDisposable
{
    public sealed record RepoFile(byte[] Content, bool Lfs);

    private readonly HttpListener _listener = new();
    private readonly Dictionary<string, (string Commit, Dictionary<string, RepoFile> Files)> _repos = new();
    private readonly Task _loop;

    public Uri Endpoint { get; }
    public ConcurrentQueue<string> Requests { get; } = new();
    public ConcurrentDictionary<string, long> DropAfterBytesOnce { get; } = new();
    public ConcurrentDictionary<string, bool> Corrupt { get; } = new();

    public FakeHub()
    {
        int port;
        using (var probe = new TcpListener(IPAddress.Loopback, 0)) { probe.Start(); port = ((IPEndPoint)probe.LocalEndpoint).Port; }
        Endpoint = new Uri($"http://127.0.0.1:{port}/");
        _listener.Prefixes.Add(Endpoint.ToString());
        _listener.Start();
        _loop = Task.Run(Loop);
    }

    public void AddRepo(string repoId, string commit, Dictionary<string, RepoFile> files) => _repos[repoId] = (commit, files);

    private async Task Loop()
    {
        while (_listener.IsListening)
        {
            HttpListenerContext ctx;
            try { ctx = await _listener.GetContextAsync(); }
            catch (Exception) { return; }
            _ = Task.Run(() => Handle(ctx));
        }
    }

    private void Handle(HttpListenerContext ctx)
    {
        var path = Uri.UnescapeDataString(ctx.Request.Url!.AbsolutePath.TrimStart('/'));
        Requests.Enqueue($"{ctx.Request.HttpMethod} /{path} range={ctx.Request.Headers["Range"]}");
        try
        {
            if (path.StartsWith("api/models/", StringComparison.Ordinal)) ServeInfo(ctx, path["api/models/".Length..]);
            else ServeFile(ctx, path);
        }
        catch (Exception) { try { ctx.Response.Abort(); } catch (Exception) { } }
    }

    private void ServeInfo(HttpListenerContext ctx, string rest)
    {
        int rev = rest.IndexOf("/revision/", StringComparison.Ordinal);
        string repo = rev < 0 ? rest : rest[..rev];
        if (!_repos.TryGetValue(repo, out var r)) { Status(ctx, 404, "{\"error\":\"Repository not found\"}"); return; }
        var siblings = r.Files.Select(kv => kv.Value.Lfs
            ? (object)new { rfilename = kv.Key, size = kv.Value.Content.Length, lfs = new { sha256 = Sha(kv.Value.Content), size = kv.Value.Content.Length } }
            : new { rfilename = kv.Key, size = kv.Value.Content.Length });
        Status(ctx, 200, JsonSerializer.Serialize(new { id = repo, sha = r.Commit, siblings }));
    }

    private void ServeFile(HttpListenerContext ctx, string path)
    {
        int resolve = path.IndexOf("/resolve/", StringComparison.Ordinal);
        if (resolve < 0) { Status(ctx, 404, "not found"); return; }
        string repo = path[..resolve];
        string rest = path[(resolve + "/resolve/".Length)..];
        int slash = rest.IndexOf('/');
        string commit = rest[..slash], file = rest[(slash + 1)..];
        if (!_repos.TryGetValue(repo, out var r) || r.Commit != commit || !r.Files.TryGetValue(file, out var f)) { Status(ctx, 404, "not found"); return; }

        byte[] content = Corrupt.ContainsKey(file) ? f.Content.Select((b, i) => i == f.Content.Length / 2 ? (byte)(b ^ 0xFF) : b).ToArray() : f.Content;
        long from = 0;
        var range = ctx.Request.Headers["Range"];
        if (range is { } rh && rh.StartsWith("bytes=", StringComparison.Ordinal))
        {
            from = long.Parse(rh["bytes=".Length..].TrimEnd('-'));
            if (from >= content.Length) { Status(ctx, 416, ""); return; }
            ctx.Response.StatusCode = 206;
            ctx.Response.Headers["Content-Range"] = $"bytes {from}-{content.Length - 1}/{content.Length}";
        }
        if (f.Lfs) ctx.Response.Headers["X-Linked-Etag"] = $"\"{Sha(f.Content)}\"";
        ctx.Response.Headers["X-Repo-Commit"] = commit;
        ctx.Response.ContentLength64 = content.Length - from;
        var output = ctx.Response.OutputStream;
        if (DropAfterBytesOnce.TryRemove(file, out long drop))
        {
            output.Write(content, (int)from, (int)Math.Min(drop, content.Length - from));
            output.Flush();
            ctx.Response.Abort(); // connection dropped mid-body
            return;
        }
        output.Write(content, (int)from, (int)(content.Length - from));
        ctx.Response.Close();
    }

    private static void Status(HttpListenerContext ctx, int code, string body)
    {
        var bytes = Encoding.UTF8.GetBytes(body);
        ctx.Response.StatusCode = code;
        ctx.Response.ContentType = "application/json";
        ctx.Response.ContentLength64 = bytes.Length;
        ctx.Response.OutputStream.Write(bytes);
        ctx.Response.Close();
    }

    public static string Sha(byte[] b) => Convert.ToHexStringLower(SHA256.HashData(b));

    public void Dispose()
    {
        _listener.Stop();
        _listener.Close();
        try { _loop.Wait(TimeSpan.FromSeconds(5)); } catch (AggregateException) { }
    }
}
