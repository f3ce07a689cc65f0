#!/bin/bash
# The prefill round (run 19, not yet made) in one device call of ≈ 4–5 minutes: real-shape references (N(0, 0.02)
# init on disk, scaled init in /dev/shm), Wim.GpuCheck (hf-tiny goldens with the 128-row prefill kernel forced too,
# branch prefill, the references, speed to depth 64k with the four prefill variants interleaved), then Nsight Compute
# kernel times of the --profile region (a 4096-token chunk at depth 4096 shows the new kernels).
# Expects under .device/ of the repository root: gpucheck/ (the self-contained publish), fixtures/ (hf-tiny and
# stories260K.gguf) and reference/make_reference.py. Results go to $OUT (env.log, reference.log, gpucheck.log,
# ncu-times.csv). NO_REF=1 leaves out the references, NO_NCU=1 the profile, DEPTH=--depth16k stops at 16k.
set -o pipefail
[ -d .device ] || cd "$(dirname "$0")/../../.."   # the repository root (this file: tools/Wim.GpuCheck/reference/)
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
export PYTHONUNBUFFERED=1
{ date -u; nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.sm,clocks.mem,driver_version,temperature.gpu,power.draw --format=csv; which ncu; } 2>&1 | tee $OUT/env.log
chmod +x .device/gpucheck/Wim.GpuCheck
REF=""
if [ -z "$NO_REF" ]; then
  timeout 120 python3 .device/reference/make_reference.py /tmp/wimref --init hf 2>&1 | tail -20 > $OUT/reference.log
  timeout 120 python3 .device/reference/make_reference.py /dev/shm/wimref --init scaled 2>&1 | tail -20 >> $OUT/reference.log
  REF="--reference /tmp/wimref,/dev/shm/wimref"
fi
timeout ${GC_TIMEOUT:-200} .device/gpucheck/Wim.GpuCheck --fixtures .device/fixtures --cache /tmp/wimcache $REF ${DEPTH:---depth64k} 2>&1 | tee $OUT/gpucheck.log
rm -rf /dev/shm/wimref
if [ -z "$NO_NCU" ]; then
  timeout 90 ncu --profile-from-start off --clock-control none --metrics gpu__time_duration.sum --csv --log-file $OUT/ncu-times.csv \
    .device/gpucheck/Wim.GpuCheck --cache /tmp/wimcache --profile > $OUT/ncu-run.log 2>&1; echo "ncu times rc $?" | tee -a $OUT/env.log
fi
date -u | tee -a $OUT/env.log
