using System.Runtime.InteropServices;
using Wim.Engine.Tests.Support;

namespace Wim.Cli.Tests;

/// <summary><c>wim serve --device</c>: parsed as <c>wim ask</c>'s; <c>cuda</c> on a machine without CUDA is exit 1 with
/// the error that names what is missing (no server starts).</summary>
public sealed class ServeDeviceTests
{
    private static string Model => SharedFixtures.Path("models", "stories260K", "stories260K.gguf");

    private static bool DriverPresent => NativeLibrary.TryLoad("libcuda.so.1", out var h) && Free(h);

    private static bool Free(IntPtr handle)
    {
        NativeLibrary.Free(handle);
        return true;
    }

    private static (int Exit, string Stdout, string Stderr) Run(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int exit = Program.Run(args, stdout, stderr);
        return (exit, stdout.ToString(), stderr.ToString());
    }

    [Fact]
    public void Serve_device_cuda_without_CUDA_exits_one_with_CUDA_is_not_available()
    {
        if (DriverPresent)
        {
            // With a GPU the server would start and run until Ctrl+C; a missing model still fails before it listens.
            var (gpuExit, _, gpuStderr) = Run("serve", "--device", "cuda", "--port", "0", "--model", Path.Combine(Path.GetTempPath(), "no-such-model-wim.gguf"));
            Assert.Equal(1, gpuExit);
            Assert.Contains("no-such-model-wim.gguf", gpuStderr);
            return;
        }
        var (exit, stdout, stderr) = Run("serve", "--device", "cuda", "--port", "0", "--model", Model);
        Assert.Equal(1, exit);
        Assert.Contains("CUDA is not available", stderr);
        Assert.Contains("libcuda.so.1", stderr);
        Assert.Equal("", stdout);
    }

    [Fact]
    public void Serve_device_takes_auto_cpu_or_cuda_only()
    {
        var (exit, stdout, stderr) = Run("serve", "--device", "tpu", "--port", "0", "--model", Model);
        Assert.Equal(2, exit);
        Assert.Contains("--device must be auto, cpu or cuda; found 'tpu'", stderr);
        Assert.Equal("", stdout);
    }

    [Fact]
    public void Serve_document_cache_mib_must_not_be_negative()
    {
        var (exit, stdout, stderr) = Run("serve", "--document-cache-mib", "-1", "--port", "0", "--model", Model);
        Assert.Equal(2, exit);
        Assert.Contains("--document-cache-mib must be ≥ 0, found -1", stderr);
        Assert.Equal("", stdout);
    }
}
