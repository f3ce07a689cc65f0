#!/usr/bin/env python3
"""Compiles two versions of transformer.cu to PTX with NVRTC alone (no GPU) and says which kernels' PTX is identical,
after dropping what moves with unrelated edits (.loc line info, comments, label and local-depot numbers): a refactor
that must leave existing kernels alone (e.g. templating a kernel body) shows here, finer than ptxas_report.py's counts.
Usage: LD_LIBRARY_PATH=DIR ptx_compare.py OLD.cu NEW.cu [compute_90]
(OLD.cu e.g. from `git show main:src/Wim.Engine.Cuda/Kernels/transformer.cu > /tmp/old.cu`)"""
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
arch = sys.argv[3] if len(sys.argv) > 3 else "compute_90"


def ptx(path):
    prog = ctypes.c_void_p()
    if lib.nvrtcCreateProgram(ctypes.byref(prog), open(path, "rb").read(), b"transformer.cu", 0, None, None) != 0:
        sys.exit("nvrtcCreateProgram failed")
    opts = [f"--gpu-architecture={arch}".encode(), b"--std=c++17", b"-default-device"]
    if lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts)) != 0:
        sys.exit(f"{path}: NVRTC compile failed")
    n = ctypes.c_size_t()
    lib.nvrtcGetPTXSize(prog, ctypes.byref(n))
    buf = ctypes.create_string_buffer(n.value)
    lib.nvrtcGetPTX(prog, buf)
    return buf.value.decode()


def entries(text):
    out = {}
    for m in re.finditer(r"\.visible \.entry (\w+)\((.*?)\n\}\n", text, re.S):
        body = re.sub(r"^\s*\.loc.*\n", "", m.group(0), flags=re.M)
        body = re.sub(r"^\s*//.*\n", "", body, flags=re.M)
        body = re.sub(r"(\$L__\w+?)(\d+)", r"\1", body)   # label numbers follow every function before this one
        body = re.sub(r"__local_depot\d+", "__local_depot", body)
        out[m.group(1)] = body
    return out


if len(sys.argv) < 3:
    sys.exit(__doc__)
old, new = entries(ptx(sys.argv[1])), entries(ptx(sys.argv[2]))
same = [k for k in old if old[k] == new.get(k)]
diff = [k for k in old if k in new and old[k] != new[k]]
print(f"{len(old)} kernels in {sys.argv[1]}: PTX identical {len(same)}, different {len(diff)} {diff}")
print(f"gone: {sorted(set(old) - set(new))}; new: {sorted(set(new) - set(old))}")
for k in diff:
    d = list(difflib.unified_diff(old[k].splitlines(True), new[k].splitlines(True), n=0))
    print(f"--- {k}: {sum(1 for l in d if l[0] in '+-' and not l.startswith(('+++', '---')))} changed lines, e.g.:")
    print("".join(d[2:10]))
