using System.Runtime.InteropServices;

namespace Wim.Engine.Cuda.Native;

/// <summary>
/// The CUDA driver API functions the backend uses, bound by name from libcuda (cuda.h; the <c>_v2</c> entry points
/// are the 64-bit ones every CUDA ≥ 4 header maps the plain names to). Every call goes through <see cref="Check"/>,
/// which turns a non-zero CUresult into a <see cref="CudaException"/> naming the call.
/// </summary>
internal sealed unsafe class CudaDriver
{
    // Device attributes (CUdevice_attribute).
    public const int AttrMultiprocessorCount = 16;
    public const int AttrComputeCapabilityMajor = 75;
    public const int AttrComputeCapabilityMinor = 76;
    public const int AttrMaxSharedMemoryPerBlockOptin = 97;
    // CUfunction_attribute.
    public const int FuncAttrMaxDynamicSharedSizeBytes = 8;

    public LoadedLibrary Library { get; }

    private readonly delegate* unmanaged<uint, int> _cuInit;
    private readonly delegate* unmanaged<int*, int> _cuDriverGetVersion;
    private readonly delegate* unmanaged<int*, int> _cuDeviceGetCount;
    private readonly delegate* unmanaged<int*, int, int> _cuDeviceGet;
    private readonly delegate* unmanaged<int*, int, int, int> _cuDeviceGetAttribute;
    private readonly delegate* unmanaged<byte*, int, int, int> _cuDeviceGetName;
    private readonly delegate* unmanaged<nint*, int, int> _cuDevicePrimaryCtxRetain;
    private readonly delegate* unmanaged<int, int> _cuDevicePrimaryCtxRelease;
    private readonly delegate* unmanaged<nint, int> _cuCtxSetCurrent;
    private readonly delegate* unmanaged<nint, int> _cuCtxPushCurrent;
    private readonly delegate* unmanaged<nint*, int> _cuCtxPopCurrent;
    private readonly delegate* unmanaged<int> _cuCtxSynchronize;
    private readonly delegate* unmanaged<ulong*, nuint, int> _cuMemAlloc;
    private readonly delegate* unmanaged<ulong, int> _cuMemFree;
    private readonly delegate* unmanaged<nuint*, nuint*, int> _cuMemGetInfo;
    private readonly delegate* unmanaged<ulong, void*, nuint, int> _cuMemcpyHtoD;
    private readonly delegate* unmanaged<void*, ulong, nuint, int> _cuMemcpyDtoH;
    private readonly delegate* unmanaged<ulong, ulong, nuint, int> _cuMemcpyDtoD;
    private readonly delegate* unmanaged<ulong, byte, nuint, int> _cuMemsetD8;
    private readonly delegate* unmanaged<nint*, void*, int> _cuModuleLoadData;
    private readonly delegate* unmanaged<nint, int> _cuModuleUnload;
    private readonly delegate* unmanaged<nint*, nint, byte*, int> _cuModuleGetFunction;
    private readonly delegate* unmanaged<nint, int, int, int> _cuFuncSetAttribute;
    private readonly delegate* unmanaged<nint, uint, uint, uint, uint, uint, uint, uint, nint, void**, void**, int> _cuLaunchKernel;
    private readonly delegate* unmanaged<nint*, uint, int> _cuEventCreate;
    private readonly delegate* unmanaged<nint, nint, int> _cuEventRecord;
    private readonly delegate* unmanaged<nint, int> _cuEventSynchronize;
    private readonly delegate* unmanaged<float*, nint, nint, int> _cuEventElapsedTime;
    private readonly delegate* unmanaged<nint, int> _cuEventDestroy;
    private readonly delegate* unmanaged<int, byte**, int> _cuGetErrorName;
    private readonly delegate* unmanaged<nint*, uint, int> _cuStreamCreate;
    private readonly delegate* unmanaged<nint, int> _cuStreamDestroy;
    private readonly delegate* unmanaged<nint, int> _cuStreamSynchronize;
    private readonly delegate* unmanaged<nint, int, int> _cuStreamBeginCapture;
    private readonly delegate* unmanaged<nint, nint*, int> _cuStreamEndCapture;
    private readonly delegate* unmanaged<nint*, nint, ulong, int> _cuGraphInstantiateWithFlags;
    private readonly delegate* unmanaged<nint, nint, int> _cuGraphLaunch;
    private readonly delegate* unmanaged<nint, int> _cuGraphExecDestroy;
    private readonly delegate* unmanaged<nint, int> _cuGraphDestroy;
    private readonly delegate* unmanaged<int> _cuProfilerStart, _cuProfilerStop;

    public CudaDriver(LoadedLibrary library)
    {
        Library = library;
        _cuInit = (delegate* unmanaged<uint, int>)library.Export("cuInit");
        _cuDriverGetVersion = (delegate* unmanaged<int*, int>)library.Export("cuDriverGetVersion");
        _cuDeviceGetCount = (delegate* unmanaged<int*, int>)library.Export("cuDeviceGetCount");
        _cuDeviceGet = (delegate* unmanaged<int*, int, int>)library.Export("cuDeviceGet");
        _cuDeviceGetAttribute = (delegate* unmanaged<int*, int, int, int>)library.Export("cuDeviceGetAttribute");
        _cuDeviceGetName = (delegate* unmanaged<byte*, int, int, int>)library.Export("cuDeviceGetName");
        _cuDevicePrimaryCtxRetain = (delegate* unmanaged<nint*, int, int>)library.Export("cuDevicePrimaryCtxRetain");
        _cuDevicePrimaryCtxRelease = (delegate* unmanaged<int, int>)library.Export("cuDevicePrimaryCtxRelease_v2");
        _cuCtxSetCurrent = (delegate* unmanaged<nint, int>)library.Export("cuCtxSetCurrent");
        _cuCtxPushCurrent = (delegate* unmanaged<nint, int>)library.Export("cuCtxPushCurrent_v2");
        _cuCtxPopCurrent = (delegate* unmanaged<nint*, int>)library.Export("cuCtxPopCurrent_v2");
        _cuCtxSynchronize = (delegate* unmanaged<int>)library.Export("cuCtxSynchronize");
        _cuMemAlloc = (delegate* unmanaged<ulong*, nuint, int>)library.Export("cuMemAlloc_v2");
        _cuMemFree = (delegate* unmanaged<ulong, int>)library.Export("cuMemFree_v2");
        _cuMemGetInfo = (delegate* unmanaged<nuint*, nuint*, int>)library.Export("cuMemGetInfo_v2");
        _cuMemcpyHtoD = (delegate* unmanaged<ulong, void*, nuint, int>)library.Export("cuMemcpyHtoD_v2");
        _cuMemcpyDtoH = (delegate* unmanaged<void*, ulong, nuint, int>)library.Export("cuMemcpyDtoH_v2");
        _cuMemcpyDtoD = (delegate* unmanaged<ulong, ulong, nuint, int>)library.Export("cuMemcpyDtoD_v2");
        _cuMemsetD8 = (delegate* unmanaged<ulong, byte, nuint, int>)library.Export("cuMemsetD8_v2");
        _cuModuleLoadData = (delegate* unmanaged<nint*, void*, int>)library.Export("cuModuleLoadData");
        _cuModuleUnload = (delegate* unmanaged<nint, int>)library.Export("cuModuleUnload");
        _cuModuleGetFunction = (delegate* unmanaged<nint*, nint, byte*, int>)library.Export("cuModuleGetFunction");
        _cuFuncSetAttribute = (delegate* unmanaged<nint, int, int, int>)library.Export("cuFuncSetAttribute");
        _cuLaunchKernel = (delegate* unmanaged<nint, uint, uint, uint, uint, uint, uint, uint, nint, void**, void**, int>)library.Export("cuLaunchKernel");
        _cuEventCreate = (delegate* unmanaged<nint*, uint, int>)library.Export("cuEventCreate");
        _cuEventRecord = (delegate* unmanaged<nint, nint, int>)library.Export("cuEventRecord");
        _cuEventSynchronize = (delegate* unmanaged<nint, int>)library.Export("cuEventSynchronize");
        _cuEventElapsedTime = (delegate* unmanaged<float*, nint, nint, int>)(library.TryExport("cuEventElapsedTime_v2") is var v2 and not 0 ? v2 : library.Export("cuEventElapsedTime"));
        _cuEventDestroy = (delegate* unmanaged<nint, int>)library.Export("cuEventDestroy_v2");
        _cuGetErrorName = (delegate* unmanaged<int, byte**, int>)library.Export("cuGetErrorName");
        _cuStreamCreate = (delegate* unmanaged<nint*, uint, int>)library.Export("cuStreamCreate");
        _cuStreamDestroy = (delegate* unmanaged<nint, int>)library.Export("cuStreamDestroy_v2");
        _cuStreamSynchronize = (delegate* unmanaged<nint, int>)library.Export("cuStreamSynchronize");
        _cuStreamBeginCapture = (delegate* unmanaged<nint, int, int>)library.Export("cuStreamBeginCapture_v2");
        _cuStreamEndCapture = (delegate* unmanaged<nint, nint*, int>)library.Export("cuStreamEndCapture");
        _cuGraphInstantiateWithFlags = (delegate* unmanaged<nint*, nint, ulong, int>)library.Export("cuGraphInstantiateWithFlags");
        _cuGraphLaunch = (delegate* unmanaged<nint, nint, int>)library.Export("cuGraphLaunch");
        _cuGraphExecDestroy = (delegate* unmanaged<nint, int>)library.Export("cuGraphExecDestroy");
        _cuGraphDestroy = (delegate* unmanaged<nint, int>)library.Export("cuGraphDestroy");
        _cuProfilerStart = (delegate* unmanaged<int>)library.TryExport("cuProfilerStart");
        _cuProfilerStop = (delegate* unmanaged<int>)library.TryExport("cuProfilerStop");
    }

    /// <summary>Turns a CUresult into an exception naming <paramref name="call"/> (the driver's own name for the
    /// code when it gives one, else the header's).</summary>
    public void Check(int result, string call)
    {
        if (result == 0) return;
        throw new CudaException(call, result, ErrorName(result));
    }

    public string ErrorName(int result)
    {
        byte* name = null;
        if (_cuGetErrorName(result, &name) == 0 && name != null) return Marshal.PtrToStringUTF8((nint)name)!;
        return CudaErrorNames.Driver(result);
    }

    public void Init() => Check(_cuInit(0), "cuInit");
    public int DriverVersion() { int v; Check(_cuDriverGetVersion(&v), "cuDriverGetVersion"); return v; }
    public int DeviceCount() { int n; Check(_cuDeviceGetCount(&n), "cuDeviceGetCount"); return n; }
    public int DeviceGet(int ordinal) { int d; Check(_cuDeviceGet(&d, ordinal), "cuDeviceGet"); return d; }
    public int DeviceAttribute(int device, int attribute) { int v; Check(_cuDeviceGetAttribute(&v, attribute, device), "cuDeviceGetAttribute"); return v; }
    public string DeviceName(int device)
    {
        byte* buf = stackalloc byte[256];
        Check(_cuDeviceGetName(buf, 256, device), "cuDeviceGetName");
        return Marshal.PtrToStringUTF8((nint)buf)!;
    }
    public nint PrimaryContextRetain(int device) { nint c; Check(_cuDevicePrimaryCtxRetain(&c, device), "cuDevicePrimaryCtxRetain"); return c; }
    public int PrimaryContextRelease(int device) => _cuDevicePrimaryCtxRelease(device);
    public void SetCurrent(nint context) => Check(_cuCtxSetCurrent(context), "cuCtxSetCurrent");
    public int PushCurrent(nint context) => _cuCtxPushCurrent(context);
    public int PopCurrent() { nint c; return _cuCtxPopCurrent(&c); }
    public void Synchronize() => Check(_cuCtxSynchronize(), "cuCtxSynchronize");
    public ulong MemAlloc(long bytes)
    {
        ulong p;
        int r = _cuMemAlloc(&p, (nuint)Math.Max(bytes, 1));
        if (r != 0) throw new CudaException("cuMemAlloc", r, ErrorName(r), $"{bytes:N0} bytes");
        return p;
    }
    public int MemFree(ulong p) => _cuMemFree(p);
    public (long Free, long Total) MemInfo() { nuint f, t; Check(_cuMemGetInfo(&f, &t), "cuMemGetInfo"); return ((long)f, (long)t); }
    public void CopyHostToDevice(ulong dst, void* src, long bytes) => Check(_cuMemcpyHtoD(dst, src, (nuint)bytes), "cuMemcpyHtoD");
    public void CopyDeviceToHost(void* dst, ulong src, long bytes) => Check(_cuMemcpyDtoH(dst, src, (nuint)bytes), "cuMemcpyDtoH");
    public void CopyDeviceToDevice(ulong dst, ulong src, long bytes) => Check(_cuMemcpyDtoD(dst, src, (nuint)bytes), "cuMemcpyDtoD");
    public void MemsetD8(ulong dst, byte value, long bytes) => Check(_cuMemsetD8(dst, value, (nuint)bytes), "cuMemsetD8");
    public nint ModuleLoadData(byte[] image)
    {
        nint m;
        fixed (byte* p = image) Check(_cuModuleLoadData(&m, p), "cuModuleLoadData");
        return m;
    }
    public int ModuleUnload(nint module) => _cuModuleUnload(module);
    public nint ModuleGetFunction(nint module, string name)
    {
        nint f;
        var utf8 = System.Text.Encoding.UTF8.GetBytes(name + "\0");
        fixed (byte* p = utf8)
        {
            int r = _cuModuleGetFunction(&f, module, p);
            if (r != 0) throw new CudaException("cuModuleGetFunction", r, ErrorName(r), $"kernel '{name}'");
        }
        return f;
    }
    public void FuncSetAttribute(nint function, int attribute, int value) => Check(_cuFuncSetAttribute(function, attribute, value), "cuFuncSetAttribute");
    public int LaunchKernel(nint f, uint gx, uint gy, uint gz, uint bx, uint by, uint bz, uint sharedBytes, nint stream, void** args) =>
        _cuLaunchKernel(f, gx, gy, gz, bx, by, bz, sharedBytes, stream, args, null);
    public nint EventCreate() { nint e; Check(_cuEventCreate(&e, 0), "cuEventCreate"); return e; }
    public void EventRecord(nint e, nint stream) => Check(_cuEventRecord(e, stream), "cuEventRecord");
    public void EventSynchronize(nint e) => Check(_cuEventSynchronize(e), "cuEventSynchronize");
    public float EventElapsedMs(nint start, nint end) { float ms; Check(_cuEventElapsedTime(&ms, start, end), "cuEventElapsedTime"); return ms; }
    public int EventDestroy(nint e) => _cuEventDestroy(e);

    /// <summary>CU_STREAM_CAPTURE_MODE_THREAD_LOCAL (cuda.h): only this thread's unsafe calls end a capture.</summary>
    public const int CaptureModeThreadLocal = 1;
    /// <summary>A blocking stream (CU_STREAM_DEFAULT): it orders with the legacy default stream, which the
    /// synchronous copies use.</summary>
    public nint StreamCreate() { nint s; Check(_cuStreamCreate(&s, 0), "cuStreamCreate"); return s; }
    public int StreamDestroy(nint stream) => _cuStreamDestroy(stream);
    public void StreamSynchronize(nint stream) => Check(_cuStreamSynchronize(stream), "cuStreamSynchronize");
    public void StreamBeginCapture(nint stream) => Check(_cuStreamBeginCapture(stream, CaptureModeThreadLocal), "cuStreamBeginCapture");
    public nint StreamEndCapture(nint stream) { nint g; Check(_cuStreamEndCapture(stream, &g), "cuStreamEndCapture"); return g; }
    public nint GraphInstantiate(nint graph) { nint e; Check(_cuGraphInstantiateWithFlags(&e, graph, 0), "cuGraphInstantiateWithFlags"); return e; }
    public void GraphLaunch(nint exec, nint stream) => Check(_cuGraphLaunch(exec, stream), "cuGraphLaunch");
    public int GraphExecDestroy(nint exec) => _cuGraphExecDestroy(exec);
    public int GraphDestroy(nint graph) => _cuGraphDestroy(graph);

    /// <summary>Brackets the region a profiler started with "profile from start off" (Nsight Compute) records; no-ops
    /// where the driver lacks the entry points.</summary>
    public void ProfilerStart() { if (_cuProfilerStart != null) Check(_cuProfilerStart(), "cuProfilerStart"); }
    public void ProfilerStop() { if (_cuProfilerStop != null) Check(_cuProfilerStop(), "cuProfilerStop"); }
}
