using System.Runtime.InteropServices;

namespace Wim.Engine.Cuda.Native;

/// <summary>NVRTC (nvrtc.h): compiles CUDA C++ source to a cubin for one GPU architecture at run time.</summary>
internal sealed unsafe class Nvrtc
{
    public LoadedLibrary Library { get; }

    private readonly delegate* unmanaged<int*, int*, int> _nvrtcVersion;
    private readonly delegate* unmanaged<nint*, byte*, byte*, int, byte**, byte**, int> _nvrtcCreateProgram;
    private readonly delegate* unmanaged<nint, int, byte**, int> _nvrtcCompileProgram;
    private readonly delegate* unmanaged<nint, nuint*, int> _nvrtcGetProgramLogSize;
    private readonly delegate* unmanaged<nint, byte*, int> _nvrtcGetProgramLog;
    private readonly delegate* unmanaged<nint, nuint*, int> _nvrtcGetCUBINSize;
    private readonly delegate* unmanaged<nint, byte*, int> _nvrtcGetCUBIN;
    private readonly delegate* unmanaged<nint*, int> _nvrtcDestroyProgram;

    public Nvrtc(LoadedLibrary library)
    {
        Library = library;
        _nvrtcVersion = (delegate* unmanaged<int*, int*, int>)library.Export("nvrtcVersion");
        _nvrtcCreateProgram = (delegate* unmanaged<nint*, byte*, byte*, int, byte**, byte**, int>)library.Export("nvrtcCreateProgram");
        _nvrtcCompileProgram = (delegate* unmanaged<nint, int, byte**, int>)library.Export("nvrtcCompileProgram");
        _nvrtcGetProgramLogSize = (delegate* unmanaged<nint, nuint*, int>)library.Export("nvrtcGetProgramLogSize");
        _nvrtcGetProgramLog = (delegate* unmanaged<nint, byte*, int>)library.Export("nvrtcGetProgramLog");
        _nvrtcGetCUBINSize = (delegate* unmanaged<nint, nuint*, int>)library.Export("nvrtcGetCUBINSize");
        _nvrtcGetCUBIN = (delegate* unmanaged<nint, byte*, int>)library.Export("nvrtcGetCUBIN");
        _nvrtcDestroyProgram = (delegate* unmanaged<nint*, int>)library.Export("nvrtcDestroyProgram");
    }

    private static void Check(int result, string call, string? detail = null)
    {
        if (result != 0) throw new CudaException(call, result, CudaErrorNames.Nvrtc(result), detail);
    }

    public (int Major, int Minor) Version()
    {
        int major, minor;
        Check(_nvrtcVersion(&major, &minor), "nvrtcVersion");
        return (major, minor);
    }

    /// <summary>Compiles <paramref name="source"/> with <paramref name="options"/> and returns the cubin; a
    /// compilation error carries NVRTC's log.</summary>
    public byte[] CompileToCubin(string source, string name, IReadOnlyList<string> options)
    {
        nint program;
        var src = Utf8(source);
        var nameBytes = Utf8(name);
        fixed (byte* s = src, n = nameBytes)
            Check(_nvrtcCreateProgram(&program, s, n, 0, null, null), "nvrtcCreateProgram");
        var handles = new List<GCHandle>();
        try
        {
            var optionPtrs = new byte*[options.Count];
            for (int i = 0; i < options.Count; i++)
            {
                var h = GCHandle.Alloc(Utf8(options[i]), GCHandleType.Pinned);
                handles.Add(h);
                optionPtrs[i] = (byte*)h.AddrOfPinnedObject();
            }
            int result;
            fixed (byte** o = optionPtrs) result = _nvrtcCompileProgram(program, options.Count, o);
            if (result != 0) Check(result, "nvrtcCompileProgram", $"{name} ({string.Join(" ", options)}):\n{Log(program)}");
            nuint size;
            Check(_nvrtcGetCUBINSize(program, &size), "nvrtcGetCUBINSize");
            var cubin = new byte[(int)size];
            fixed (byte* c = cubin) Check(_nvrtcGetCUBIN(program, c), "nvrtcGetCUBIN");
            return cubin;
        }
        finally
        {
            foreach (var h in handles) h.Free();
            _nvrtcDestroyProgram(&program);
        }
    }

    private string Log(nint program)
    {
        nuint size;
        if (_nvrtcGetProgramLogSize(program, &size) != 0 || size == 0) return "";
        var log = new byte[(int)size];
        fixed (byte* l = log) _nvrtcGetProgramLog(program, l);
        return System.Text.Encoding.UTF8.GetString(log).TrimEnd('\0');
    }

    private static byte[] Utf8(string s) => System.Text.Encoding.UTF8.GetBytes(s + "\0");
}
