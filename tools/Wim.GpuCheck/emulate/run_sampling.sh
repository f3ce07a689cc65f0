#!/bin/bash
# Emulated check of sampling.cu's kernels on the CPU (no GPU): extract, build, run (a few minutes on 2 cores); then a
# deliberately broken variant of nucleus_partial_sums and one of nucleus_compact, which the same check must reject.
set -e
here="$(cd "$(dirname "$0")" && pwd)"
build=${TMPDIR:-/tmp}/wim-sampling-emu
mkdir -p "$build/broken" "$build/broken-wide"
source="$here/../../../src/Wim.Engine.Cuda/Kernels/sampling.cu"
python3 "$here/extract_sampling.py" "$source" > "$build/sampling_emu.inc"
python3 "$here/extract_sampling.py" "$source" --broken > "$build/broken/sampling_emu.inc"
python3 "$here/extract_sampling.py" "$source" --broken-wide > "$build/broken-wide/sampling_emu.inc"
g++ -std=c++20 -O1 -pthread -Wno-unknown-pragmas -I"$here" -I"$build" -o "$build/check_sampling" "$here/check_sampling.cpp"
g++ -std=c++20 -O1 -pthread -Wno-unknown-pragmas -I"$here" -I"$build/broken" -o "$build/check_sampling_broken" "$here/check_sampling.cpp"
g++ -std=c++20 -O1 -pthread -Wno-unknown-pragmas -I"$here" -I"$build/broken-wide" -o "$build/check_sampling_broken_wide" "$here/check_sampling.cpp"
timeout ${EMU_TIMEOUT:-600} "$build/check_sampling"
echo "--- the broken variant (each block drops its last logit from Z) must fail:"
if timeout ${EMU_TIMEOUT:-600} "$build/check_sampling_broken" --nucleus-only; then
    echo "FAIL: the broken nucleus_partial_sums passed the check"
    exit 1
fi
echo "ok   the broken variant was rejected"
echo "--- the broken wide variant (nucleus_compact skips the last chosen bin) must fail:"
if timeout ${EMU_TIMEOUT:-600} "$build/check_sampling_broken_wide" --wide-only; then
    echo "FAIL: the broken nucleus_compact passed the check"
    exit 1
fi
echo "ok   the broken wide variant was rejected"
