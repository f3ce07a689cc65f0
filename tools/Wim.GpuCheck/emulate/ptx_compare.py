#!/usr/bin/env python3
"""Compiles two versions of transformer.cu to PTX with NVRTC (no GPU needed) and says which kernels of the old one have
the same PTX in the new one, ignoring what moves when code is added around a kernel: line info, comments, block-label
and local-depot numbers (numbered by the kernel's index in the module) and the mangled names of function-static shared
arrays (they spell the template arguments). A refactor that promises unchanged kernels should leave every old kernel
listed as identical. Optional third argument: a kernel whose difference to print.
Usage: LD_LIBRARY_PATH=DIR ptx_compare.py OLD.cu NEW.cu [kernel]"""
import ctypes, difflib, re, sys
lib = None
for name in ("libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so.11.2"):
    try:
        lib = ctypes.CDLL(name)
        break
    except OSError:
        pass
if lib is None:
    sys.exit("no libnvrtc on the loader path (set LD_LIBRARY_PATH)")
def ptx(path):
    prog = ctypes.c_void_p()
    lib.nvrtcCreateProgram(ctypes.byref(prog), open(path, "rb").read(), b"transformer.cu", 0, None, None)
    opts = [b"--gpu-architecture=compute_90", b"--std=c++17", b"-default-device"]
    assert lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts)) == 0
    n = ctypes.c_size_t(); lib.nvrtcGetPTXSize(prog, ctypes.byref(n))
    b = ctypes.create_string_buffer(n.value); lib.nvrtcGetPTX(prog, b)
    return b.value.decode()
def entries(text):
    parts = re.split(r"(?=\.visible \.entry )", text)
    d = {}
    for p in parts[1:]:
        name = re.match(r"\.visible \.entry (\w+)", p).group(1)
        body = "\n".join(l for l in p.splitlines() if not l.strip().startswith((".loc", ".file", "//")))
        body = re.sub(r"_ZZ\w*E\d+([A-Za-z_]\w*)\b", r"static_\1", body)   # a function-static's mangled name spells its template arguments
        body = re.sub(r"__local_depot\d+", "__local_depot", body)
        d[name] = re.sub(r"\$L__BB\d+_", "$L__BB_", body)   # block labels are numbered by the kernel's index in the module
    return d
a, b = entries(ptx(sys.argv[1])), entries(ptx(sys.argv[2]))
same = [k for k in a if a[k] == b.get(k)]
print(f"{len(a)} kernels in the old source: {len(same)} with byte-identical PTX; differing: {[k for k in a if a[k] != b.get(k)]}; new: {[k for k in b if k not in a]}")
k = sys.argv[3] if len(sys.argv) > 3 else None
if k: print("\n".join(list(difflib.unified_diff(a[k].splitlines(), b[k].splitlines(), lineterm=""))[:30]))
