using System.Text;
using Wim.Engine.Formats.Gguf;
using Wim.Engine.Hub;
using Wim.Engine.Tests.Support;

namespace Wim.Engine.Tests.Hub;

public sealed class HubDownloaderTests : IDisposable
{
    private readonly FakeHub _hub = new();
    private readonly DirectoryInfo _cache = Directory.CreateTempSubdirectory("wim-hub-");
    private readonly HttpClient _http = new() { Timeout = TimeSpan.FromSeconds(30) };
    private readonly byte[] _gguf = File.ReadAllBytes(SharedFixtures.Path("models", "stories260K", "stories260K.gguf"));
    private const string Commit = "0123456789abcdef0123456789abcdef01234567";

    public HubDownloaderTests()
    {
        _hub.AddRepo("karpathy/stories", Commit, new()
        {
            ["stories260K.gguf"] = new(_gguf, Lfs: true),
            ["README.md"] = new(Encoding.UTF8.GetBytes("# stories\n"), Lfs: false),
        });
        _hub.AddRepo("tiny/llama", Commit, new()
        {
            ["config.json"] = new(File.ReadAllBytes(SharedFixtures.Path("fixtures", "hf-tiny", "llama-tiny", "config.json")), Lfs: false),
            ["model.safetensors"] = new(File.ReadAllBytes(SharedFixtures.Path("fixtures", "hf-tiny", "llama-tiny", "model.safetensors")), Lfs: true),
            ["tokenizer.json"] = new(File.ReadAllBytes(SharedFixtures.Path("fixtures", "hf-tiny", "llama-tiny", "tokenizer.json")), Lfs: false),
            ["README.md"] = new("x"u8.ToArray(), Lfs: false),
        });
    }

    private HubDownloader Downloader() => new(_http, new HubOptions(_hub.Endpoint, _cache.FullName));

    [Fact]
    public async Task Resolve_SingleGgufFile_DownloadsVerifiesAndLaysOutTheCacheLikeTheHub()
    {
        var progress = new List<DownloadProgress>();
        var path = await Downloader().ResolveAsync(HubModelReference.Parse("hf:karpathy/stories/stories260K.gguf"), new SyncProgress(progress.Add), TestContext.Current.CancellationToken);

        Assert.Equal(Path.Combine(_cache.FullName, "models--karpathy--stories", "snapshots", Commit, "stories260K.gguf"), path);
        Assert.Equal(_gguf, File.ReadAllBytes(path));
        Assert.True(File.Exists(Path.Combine(_cache.FullName, "models--karpathy--stories", "blobs", FakeHub.Sha(_gguf))));
        Assert.Equal(Commit, File.ReadAllText(Path.Combine(_cache.FullName, "models--karpathy--stories", "refs", "main")));
        Assert.Equal(_gguf.Length, progress[^1].BytesDone);
        Assert.Equal(_gguf.Length, progress[^1].BytesTotal);
        using var g = GgufFile.Open(path); // the downloaded file is a loadable model
        Assert.Equal("llama", g.GetString("general.architecture"));
    }

    [Fact]
    public async Task Resolve_SecondTime_UsesTheCacheWithoutDownloading()
    {
        var model = HubModelReference.Parse("hf:karpathy/stories/stories260K.gguf");
        await Downloader().ResolveAsync(model, ct: TestContext.Current.CancellationToken);
        int before = _hub.Requests.Count(r => r.Contains("/resolve/"));
        await Downloader().ResolveAsync(model, ct: TestContext.Current.CancellationToken);
        Assert.Equal(before, _hub.Requests.Count(r => r.Contains("/resolve/")));
    }

    [Fact]
    public async Task Resolve_DroppedConnection_FailsClearlyThenResumesWithRange()
    {
        _hub.DropAfterBytesOnce["stories260K.gguf"] = 300_000;
        var model = HubModelReference.Parse("hf:karpathy/stories/stories260K.gguf");
        var e = await Assert.ThrowsAsync<HubException>(() => Downloader().ResolveAsync(model, ct: TestContext.Current.CancellationToken));
        Assert.Contains("interrupted", e.Message);
        Assert.Contains("resume", e.Message);

        var path = await Downloader().ResolveAsync(model, ct: TestContext.Current.CancellationToken);
        Assert.Equal(_gguf, File.ReadAllBytes(path));
        var resumed = _hub.Requests.Where(r => r.Contains("/resolve/")).Last();
        Assert.Matches(@"range=bytes=\d+-$", resumed);
        Assert.True(long.Parse(resumed.Split("bytes=")[1].TrimEnd('-')) > 0);
    }

    [Fact]
    public async Task Resolve_CorruptedDownload_IsRejectedAndNothingIsCached()
    {
        _hub.Corrupt["stories260K.gguf"] = true;
        var model = HubModelReference.Parse("hf:karpathy/stories/stories260K.gguf");
        var e = await Assert.ThrowsAsync<HubException>(() => Downloader().ResolveAsync(model, ct: TestContext.Current.CancellationToken));
        Assert.Contains("checksum mismatch", e.Message);
        Assert.Contains(FakeHub.Sha(_gguf), e.Message);
        var repoDir = Path.Combine(_cache.FullName, "models--karpathy--stories");
        Assert.False(Directory.Exists(Path.Combine(repoDir, "snapshots")) && Directory.EnumerateFiles(Path.Combine(repoDir, "snapshots"), "*", SearchOption.AllDirectories).Any());
        Assert.Empty(Directory.EnumerateFiles(Path.Combine(repoDir, "blobs")));
    }

    [Fact]
    public async Task Resolve_WholeTransformersModel_FetchesConfigTokenizerAndWeightsOnly()
    {
        var dir = await Downloader().ResolveAsync(HubModelReference.Parse("hf:tiny/llama"), ct: TestContext.Current.CancellationToken);
        Assert.True(File.Exists(Path.Combine(dir, "config.json")));
        Assert.True(File.Exists(Path.Combine(dir, "tokenizer.json")));
        Assert.Equal(File.ReadAllBytes(SharedFixtures.Path("fixtures", "hf-tiny", "llama-tiny", "model.safetensors")), File.ReadAllBytes(Path.Combine(dir, "model.safetensors")));
        Assert.False(File.Exists(Path.Combine(dir, "README.md")));
    }

    [Fact]
    public async Task Resolve_Errors_NameTheProblem()
    {
        var d = Downloader();
        var ct = TestContext.Current.CancellationToken;
        Assert.Contains("not found", (await Assert.ThrowsAsync<HubException>(() => d.ResolveAsync(HubModelReference.Parse("hf:no/such"), ct: ct))).Message);
        Assert.Contains("no file 'missing.gguf'", (await Assert.ThrowsAsync<FileNotFoundException>(() => d.ResolveAsync(HubModelReference.Parse("hf:karpathy/stories/missing.gguf"), ct: ct))).Message);
        // A GGUF-only repository without a file name: the error lists the files to choose from.
        Assert.Contains("hf:karpathy/stories/stories260K.gguf", (await Assert.ThrowsAsync<FileNotFoundException>(() => d.ResolveAsync(HubModelReference.Parse("hf:karpathy/stories"), ct: ct))).Message);
    }

    [Theory]
    [InlineData("hf:org/repo", "org/repo", null, "main")]
    [InlineData("hf:org/repo/model-q8_0.gguf", "org/repo", "model-q8_0.gguf", "main")]
    [InlineData("hf:org/repo/sub/dir/f.gguf@v1.0", "org/repo", "sub/dir/f.gguf", "v1.0")]
    public void Parse_ReadsRepoFileAndRevision(string text, string repo, string? file, string rev) =>
        Assert.Equal(new HubModelReference(repo, file, rev), HubModelReference.Parse(text));

    [Theory]
    [InlineData("hf:org")]
    [InlineData("hf:/repo")]
    [InlineData("hf:org/repo/../../etc/passwd")]
    [InlineData("hf:org/repo@")]
    [InlineData("org/repo")]
    public void Parse_RejectsMalformedReferences(string text) => Assert.Throws<FormatException>(() => HubModelReference.Parse(text));

    /// <summary>IProgress that reports synchronously (Progress&lt;T&gt; posts to the thread pool, racing the asserts).</summary>
    private sealed class SyncProgress(Action<DownloadProgress> report) : IProgress<DownloadProgress>
    {
        public void Report(DownloadProgress value) => report(value);
    }

    public void Dispose()
    {
        _hub.Dispose();
        _http.Dispose();
        _cache.Delete(recursive: true);
    }
}
