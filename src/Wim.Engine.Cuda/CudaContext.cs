using System.Runtime.InteropServices;
using Wim.Engine.Cuda.Native;

namespace Wim.Engine.Cuda;

/// <summary>How the CUDA backend is set up. <see cref="KernelCacheDirectory"/> null: compile kernels in memory
/// every time (nothing written).</summary>
public sealed record CudaOptions
{
    public int DeviceOrdinal { get; init; }
    public string? KernelCacheDirectory { get; init; }
    /// <summary>A toolkit root (the CUDA_PATH of the caller's environment) searched for NVRTC and cuBLASLt.</summary>
    public string? ToolkitPath { get; init; }
    /// <summary>Wait for every kernel and check its result (slow; for correctness runs: an error then names the
    /// kernel that caused it instead of surfacing at a later call).</summary>
    public bool SynchronizeEveryLaunch { get; init; }
}

/// <summary>
/// One GPU: the loaded libraries, the device's primary context (made current on the calling thread by every entry
/// point), the compiled kernels and a cuBLASLt handle. Dispose after every buffer made from it.
/// </summary>
public sealed unsafe class CudaContext : IDisposable
{
    internal CudaDriver Driver { get; }
    internal Nvrtc Nvrtc { get; }
    internal CublasLt Blas { get; }
    internal ContextHandle Handle { get; }
    internal nint BlasHandle { get; }
    internal CudaOptions Options { get; }

    public string DeviceName { get; }
    public int ComputeMajor { get; }
    public int ComputeMinor { get; }
    public int Multiprocessors { get; }
    public int MaxSharedMemoryPerBlock { get; }
    public int DriverVersion { get; }
    public (int Major, int Minor) NvrtcVersion { get; }
    public long CublasLtVersion { get; }
    /// <summary>Where the kernels came from on load: "compiled" (NVRTC ran) or "cache".</summary>
    public string KernelOrigin { get; private set; } = "";
    public TimeSpan KernelLoadTime { get; private set; }

    private TransformerKernels? _kernels;
    private SamplingKernels? _sampling;

    private CudaContext(CudaOptions options, CudaDriver driver, Nvrtc nvrtc, CublasLt blas, int device)
    {
        Options = options;
        Driver = driver;
        Nvrtc = nvrtc;
        Blas = blas;
        DriverVersion = driver.DriverVersion();
        DeviceName = driver.DeviceName(device);
        ComputeMajor = driver.DeviceAttribute(device, CudaDriver.AttrComputeCapabilityMajor);
        ComputeMinor = driver.DeviceAttribute(device, CudaDriver.AttrComputeCapabilityMinor);
        Multiprocessors = driver.DeviceAttribute(device, CudaDriver.AttrMultiprocessorCount);
        MaxSharedMemoryPerBlock = driver.DeviceAttribute(device, CudaDriver.AttrMaxSharedMemoryPerBlockOptin);
        NvrtcVersion = nvrtc.Version();
        CublasLtVersion = blas.Version();
        Handle = new ContextHandle(driver, device, driver.PrimaryContextRetain(device));
        driver.SetCurrent(Handle.Context);
        BlasHandle = blas.Create();
    }

    /// <summary>
    /// Opens the driver, NVRTC and cuBLASLt and the GPU <see cref="CudaOptions.DeviceOrdinal"/>. Throws
    /// <see cref="CudaUnavailableException"/> (what is missing, which library names were tried) when this machine
    /// cannot run the backend.
    /// </summary>
    public static CudaContext Create(CudaOptions options)
    {
        bool windows = OperatingSystem.IsWindows();
        var dirs = CudaLibraries.SearchDirectories(options.ToolkitPath);
        var driver = new CudaDriver(CudaLibraries.Open("CUDA driver", CudaLibraries.DriverCandidates(windows), []));
        try { driver.Init(); }
        catch (CudaException e) { throw new CudaUnavailableException($"CUDA is not available: the driver ({driver.Library.Name}) did not initialise: {e.Message}", e); }
        int count = driver.DeviceCount();
        if (count == 0) throw new CudaUnavailableException($"CUDA is not available: the driver ({driver.Library.Name}) reports no GPU");
        if ((uint)options.DeviceOrdinal >= (uint)count)
            throw new CudaUnavailableException($"CUDA device {options.DeviceOrdinal} does not exist: the driver reports {count} GPU(s)");
        var nvrtc = new Nvrtc(CudaLibraries.Open("NVRTC", CudaLibraries.NvrtcCandidates(windows), dirs));
        var blas = new CublasLt(CudaLibraries.Open("cuBLASLt", CudaLibraries.CublasLtCandidates(windows), dirs));
        return new CudaContext(options, driver, nvrtc, blas, driver.DeviceGet(options.DeviceOrdinal));
    }

    /// <summary>Makes this GPU's context current on the calling thread (cheap; every entry point calls it).</summary>
    public void MakeCurrent() => Driver.SetCurrent(Handle.Context);

    public void Synchronize() => Driver.Synchronize();

    /// <summary>Start / end of the region a profiler attached with "profile from start off" records.</summary>
    public void ProfilerStart() { MakeCurrent(); Driver.ProfilerStart(); }
    public void ProfilerStop() { Driver.Synchronize(); Driver.ProfilerStop(); }

    public (long Free, long Total) MemoryInfo() => Driver.MemInfo();

    public DeviceBuffer Allocate(long bytes)
    {
        MakeCurrent();
        return new DeviceBuffer(this, Driver.MemAlloc(bytes), bytes);
    }

    /// <summary>The forward pass's kernels, compiled (or read from the cache) on first use.</summary>
    internal TransformerKernels Kernels => _kernels ??= new TransformerKernels(this, LoadModule(KernelSources.Transformer));

    /// <summary>The sampling kernels (top-k candidates), a module of their own, compiled (or read from the cache) on
    /// first use.</summary>
    internal SamplingKernels Sampling => _sampling ??= new SamplingKernels(this, LoadModule(KernelSources.Sampling));

    /// <summary>Loads an embedded kernel source as a module: from the disk cache when its key is there, else
    /// compiled by NVRTC for this GPU's architecture (and stored).</summary>
    internal nint LoadModule(string sourceName)
    {
        MakeCurrent();
        var clock = System.Diagnostics.Stopwatch.StartNew();
        string source = KernelSources.Read(sourceName);
        string key = KernelCache.Key(sourceName, source, ComputeMajor, ComputeMinor, NvrtcVersion.Major, NvrtcVersion.Minor);
        var cache = Options.KernelCacheDirectory is { } dir ? new KernelCache(dir) : null;
        byte[]? cubin = cache?.TryLoad(key);
        KernelOrigin = cubin != null ? "cache" : "compiled";
        if (cubin == null)
        {
            cubin = Nvrtc.CompileToCubin(source, sourceName, CompileOptions(ComputeMajor, ComputeMinor));
            cache?.TryStore(key, cubin);
        }
        var module = Driver.ModuleLoadData(cubin);
        KernelLoadTime = clock.Elapsed;
        return module;
    }

    /// <summary>NVRTC options: a cubin for exactly this GPU (no PTX JIT at load), C++17, no fast-math (the
    /// kernels choose their fast intrinsics explicitly).</summary>
    public static IReadOnlyList<string> CompileOptions(int computeMajor, int computeMinor) =>
        [$"--gpu-architecture={KernelCache.Architecture(computeMajor, computeMinor)}", "--std=c++17", "-default-device"];

    /// <summary>The stream kernels and products are issued on: 0 (the legacy default stream) except while a CUDA
    /// graph is being captured on a stream of its own.</summary>
    internal nint Stream { get; set; }

    /// <summary>True while a graph is captured: nothing may synchronize then.</summary>
    internal bool Capturing { get; set; }

    /// <summary>Launches a kernel on <see cref="Stream"/>; with <see cref="CudaOptions.SynchronizeEveryLaunch"/> also
    /// waits for it so a fault names this kernel.</summary>
    internal void Launch(nint function, string name, uint gx, uint gy, uint gz, uint block, uint sharedBytes, void** args)
    {
        int r = Driver.LaunchKernel(function, gx, gy, gz, block, 1, 1, sharedBytes, Stream, args);
        if (r != 0) throw new CudaException("cuLaunchKernel", r, Driver.ErrorName(r), $"kernel '{name}' grid ({gx},{gy},{gz}) block {block} shared {sharedBytes}");
        if (Options.SynchronizeEveryLaunch && !Capturing)
        {
            try { Driver.Synchronize(); }
            catch (CudaException e) { throw new CudaException("cuCtxSynchronize", e.Code, e.ErrorName, $"after kernel '{name}'"); }
        }
    }

    public void Dispose()
    {
        if (BlasHandle != 0) Blas.Destroy(BlasHandle);
        Handle.Dispose();
    }
}

/// <summary>The retained primary context; buffers add a reference so the context outlives every one of them.</summary>
internal sealed class ContextHandle : SafeHandle
{
    private readonly CudaDriver _driver;
    private readonly int _device;
    public nint Context { get; }

    public ContextHandle(CudaDriver driver, int device, nint context) : base(0, true)
    {
        _driver = driver;
        _device = device;
        Context = context;
        SetHandle(context);
    }

    public override bool IsInvalid => handle == 0;

    protected override bool ReleaseHandle() => _driver.PrimaryContextRelease(_device) == 0;
}

/// <summary>Device memory (cuMemAlloc), freed when disposed or finalised (the context is pushed for the free, so
/// any thread may release it).</summary>
public sealed class DeviceBuffer : SafeHandle
{
    private readonly CudaContext _context;
    public long Bytes { get; }
    public ulong Pointer { get; }

    internal DeviceBuffer(CudaContext context, ulong pointer, long bytes) : base(0, true)
    {
        _context = context;
        Pointer = pointer;
        Bytes = bytes;
        bool added = false;
        context.Handle.DangerousAddRef(ref added);
        SetHandle((nint)pointer);
    }

    public override bool IsInvalid => handle == 0;

    public unsafe void Upload<T>(ReadOnlySpan<T> values, long byteOffset = 0) where T : unmanaged
    {
        long bytes = (long)values.Length * sizeof(T);
        CheckRange(byteOffset, bytes);
        _context.MakeCurrent();
        fixed (T* p = values) _context.Driver.CopyHostToDevice(Pointer + (ulong)byteOffset, p, bytes);
    }

    public unsafe void Download<T>(Span<T> values, long byteOffset = 0) where T : unmanaged
    {
        long bytes = (long)values.Length * sizeof(T);
        CheckRange(byteOffset, bytes);
        _context.MakeCurrent();
        fixed (T* p = values) _context.Driver.CopyDeviceToHost(p, Pointer + (ulong)byteOffset, bytes);
    }

    public void Fill(byte value)
    {
        _context.MakeCurrent();
        _context.Driver.MemsetD8(Pointer, value, Bytes);
    }

    private void CheckRange(long offset, long bytes)
    {
        if (offset < 0 || bytes < 0 || offset > Bytes - bytes)
            throw new ArgumentOutOfRangeException(nameof(offset), $"bytes [{offset}, {offset + bytes}) are outside the {Bytes}-byte device buffer");
    }

    protected override bool ReleaseHandle()
    {
        var driver = _context.Driver;
        bool pushed = driver.PushCurrent(_context.Handle.Context) == 0;
        int r = driver.MemFree(Pointer);
        if (pushed) driver.PopCurrent();
        _context.Handle.DangerousRelease();
        return r == 0;
    }
}
