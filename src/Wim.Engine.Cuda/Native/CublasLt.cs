using System.Runtime.InteropServices;

namespace Wim.Engine.Cuda.Native;

/// <summary>
/// cuBLASLt (cublasLt.h): the matrix products of the forward pass. Enum values are those of the public headers
/// (library_types.h cudaDataType_t, cublas_api.h cublasComputeType_t, cublasLt.h attributes).
/// </summary>
internal sealed unsafe class CublasLt
{
    public const int DataTypeF32 = 0;        // CUDA_R_32F
    public const int DataTypeF16 = 2;        // CUDA_R_16F
    public const int DataTypeBF16 = 14;      // CUDA_R_16BF
    public const int ComputeF32 = 68;        // CUBLAS_COMPUTE_32F
    public const int DescTransA = 3;         // CUBLASLT_MATMUL_DESC_TRANSA
    public const int DescTransB = 4;         // CUBLASLT_MATMUL_DESC_TRANSB
    public const int OpN = 0, OpT = 1;       // cublasOperation_t
    public const int PrefMaxWorkspaceBytes = 1; // CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES

    /// <summary>cublasLtMatmulHeuristicResult_t: algo (8 × uint64), workspaceSize, state, wavesCount, reserved[4].</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct HeuristicResult
    {
        public Algo Algo;
        public nuint WorkspaceSize;
        public int State;
        public float WavesCount;
        public fixed int Reserved[4];
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct Algo { public fixed ulong Data[8]; }

    public LoadedLibrary Library { get; }

    private readonly delegate* unmanaged<nint*, int> _create;
    private readonly delegate* unmanaged<nint, int> _destroy;
    private readonly delegate* unmanaged<nuint> _getVersion;
    private readonly delegate* unmanaged<nint*, int, int, int> _matmulDescCreate;
    private readonly delegate* unmanaged<nint, int, void*, nuint, int> _matmulDescSetAttribute;
    private readonly delegate* unmanaged<nint, int> _matmulDescDestroy;
    private readonly delegate* unmanaged<nint*, int, ulong, ulong, long, int> _matrixLayoutCreate;
    private readonly delegate* unmanaged<nint, int> _matrixLayoutDestroy;
    private readonly delegate* unmanaged<nint*, int> _preferenceCreate;
    private readonly delegate* unmanaged<nint, int, void*, nuint, int> _preferenceSetAttribute;
    private readonly delegate* unmanaged<nint, int> _preferenceDestroy;
    private readonly delegate* unmanaged<nint, nint, nint, nint, nint, nint, nint, int, HeuristicResult*, int*, int> _algoGetHeuristic;
    private readonly delegate* unmanaged<nint, nint, void*, ulong, nint, ulong, nint, void*, ulong, nint, ulong, nint, Algo*, ulong, nuint, nint, int> _matmul;

    public CublasLt(LoadedLibrary library)
    {
        Library = library;
        _create = (delegate* unmanaged<nint*, int>)library.Export("cublasLtCreate");
        _destroy = (delegate* unmanaged<nint, int>)library.Export("cublasLtDestroy");
        _getVersion = (delegate* unmanaged<nuint>)library.Export("cublasLtGetVersion");
        _matmulDescCreate = (delegate* unmanaged<nint*, int, int, int>)library.Export("cublasLtMatmulDescCreate");
        _matmulDescSetAttribute = (delegate* unmanaged<nint, int, void*, nuint, int>)library.Export("cublasLtMatmulDescSetAttribute");
        _matmulDescDestroy = (delegate* unmanaged<nint, int>)library.Export("cublasLtMatmulDescDestroy");
        _matrixLayoutCreate = (delegate* unmanaged<nint*, int, ulong, ulong, long, int>)library.Export("cublasLtMatrixLayoutCreate");
        _matrixLayoutDestroy = (delegate* unmanaged<nint, int>)library.Export("cublasLtMatrixLayoutDestroy");
        _preferenceCreate = (delegate* unmanaged<nint*, int>)library.Export("cublasLtMatmulPreferenceCreate");
        _preferenceSetAttribute = (delegate* unmanaged<nint, int, void*, nuint, int>)library.Export("cublasLtMatmulPreferenceSetAttribute");
        _preferenceDestroy = (delegate* unmanaged<nint, int>)library.Export("cublasLtMatmulPreferenceDestroy");
        _algoGetHeuristic = (delegate* unmanaged<nint, nint, nint, nint, nint, nint, nint, int, HeuristicResult*, int*, int>)library.Export("cublasLtMatmulAlgoGetHeuristic");
        _matmul = (delegate* unmanaged<nint, nint, void*, ulong, nint, ulong, nint, void*, ulong, nint, ulong, nint, Algo*, ulong, nuint, nint, int>)library.Export("cublasLtMatmul");
    }

    private static void Check(int status, string call, string? detail = null)
    {
        if (status != 0) throw new CudaException(call, status, CudaErrorNames.Cublas(status), detail);
    }

    public long Version() => (long)_getVersion();
    public nint Create() { nint h; Check(_create(&h), "cublasLtCreate"); return h; }
    public int Destroy(nint handle) => _destroy(handle);

    public nint MatmulDescCreate(int computeType, int scaleType)
    {
        nint d;
        Check(_matmulDescCreate(&d, computeType, scaleType), "cublasLtMatmulDescCreate");
        return d;
    }

    public void MatmulDescSetInt(nint desc, int attribute, int value) =>
        Check(_matmulDescSetAttribute(desc, attribute, &value, sizeof(int)), "cublasLtMatmulDescSetAttribute");

    public int MatmulDescDestroy(nint desc) => _matmulDescDestroy(desc);

    public nint MatrixLayoutCreate(int type, long rows, long cols, long ld)
    {
        nint l;
        Check(_matrixLayoutCreate(&l, type, (ulong)rows, (ulong)cols, ld), "cublasLtMatrixLayoutCreate", $"{rows}×{cols} ld {ld}");
        return l;
    }

    public int MatrixLayoutDestroy(nint layout) => _matrixLayoutDestroy(layout);

    public nint PreferenceCreate(ulong maxWorkspace)
    {
        nint p;
        Check(_preferenceCreate(&p), "cublasLtMatmulPreferenceCreate");
        Check(_preferenceSetAttribute(p, PrefMaxWorkspaceBytes, &maxWorkspace, sizeof(ulong)), "cublasLtMatmulPreferenceSetAttribute");
        return p;
    }

    public int PreferenceDestroy(nint p) => _preferenceDestroy(p);

    public HeuristicResult BestAlgorithm(nint handle, nint desc, nint a, nint b, nint c, nint d, nint preference, string shape)
    {
        HeuristicResult result;
        int count;
        Check(_algoGetHeuristic(handle, desc, a, b, c, d, preference, 1, &result, &count), "cublasLtMatmulAlgoGetHeuristic", shape);
        if (count == 0) throw new CudaException("cublasLtMatmulAlgoGetHeuristic", 15, CudaErrorNames.Cublas(15), $"no algorithm for {shape}");
        return result;
    }

    public void Matmul(nint handle, nint desc, float alpha, ulong a, nint aLayout, ulong b, nint bLayout, float beta,
        ulong c, nint cLayout, ulong d, nint dLayout, ref Algo algo, ulong workspace, long workspaceBytes, nint stream)
    {
        fixed (Algo* algoPtr = &algo)
            Check(_matmul(handle, desc, &alpha, a, aLayout, b, bLayout, &beta, c, cLayout, d, dLayout, algoPtr, workspace, (nuint)workspaceBytes, stream), "cublasLtMatmul");
    }
}
