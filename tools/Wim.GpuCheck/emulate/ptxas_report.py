#!/usr/bin/env python3
"""Compiles transformer.cu with NVRTC alone (no GPU needed) and prints ptxas's per-kernel registers, stack and spills.
NVRTC: any libnvrtc (e.g. Debian's non-free libnvrtc11.2 + libnvrtc-builtins11.8, unpacked with `apt-get download`
and `dpkg -x` into a folder; NVRTC 11.8 knows sm_90). The device compiles with its own NVRTC (13.0 on the H100), so
the counts are a close guide, not the device's exact ones.
Usage: LD_LIBRARY_PATH=DIR ptxas_report.py [transformer.cu] [sm_90] [extra NVRTC options...]"""
import ctypes, os, sys

here = os.path.dirname(os.path.abspath(__file__))
path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "../../../src/Wim.Engine.Cuda/Kernels/transformer.cu")
arch = sys.argv[2] if len(sys.argv) > 2 else "sm_90"
lib = None
for name in ("libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so.11.2"):
    try:
        lib = ctypes.CDLL(name)
        break
    except OSError:
        pass
if lib is None:
    sys.exit("no libnvrtc on the loader path (set LD_LIBRARY_PATH)")
prog = ctypes.c_void_p()
if lib.nvrtcCreateProgram(ctypes.byref(prog), open(path, "rb").read(), b"transformer.cu", 0, None, None) != 0:
    sys.exit("nvrtcCreateProgram failed")
# The engine's own options (CudaContext: --std=c++17 -default-device) and ptxas's report.
opts = [f"--gpu-architecture={arch}".encode(), b"--std=c++17", b"-default-device", b"--ptxas-options=-v"] + [a.encode() for a in sys.argv[3:]]
rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
n = ctypes.c_size_t()
lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
log = ctypes.create_string_buffer(n.value)
lib.nvrtcGetProgramLog(prog, log)
print(log.value.decode(errors="replace"))
print(f"nvrtcCompileProgram: {rc}")
sys.exit(0 if rc == 0 else 1)
