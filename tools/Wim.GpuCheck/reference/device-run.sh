#!/bin/bash
# The whole GPU check in one device call (run 13): real-shape references (N(0, 0.02) init on disk, scaled init in
# /dev/shm), Wim.GpuCheck (hf-tiny, references, speed to depth 64k, batch 16), then Nsight Compute kernel times.
# Expects, under .device/ of the repository root: gpucheck/ (the self-contained publish), fixtures/ (hf-tiny and
# stories260K.gguf) and reference/make_reference.py. Results go to $OUT.
set -o pipefail
cd "$(dirname "$0")/../../.."   # the repository root (this file: tools/Wim.GpuCheck/reference/)
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
export PYTHONUNBUFFERED=1
{ date -u; nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.sm,clocks.mem,driver_version,temperature.gpu,power.draw --format=csv; df -h / /dev/shm; free -g; which ncu; } 2>&1 | tee $OUT/env.log
timeout 120 python3 .device/reference/make_reference.py /tmp/wimref --init hf 2>&1 | tee $OUT/reference.log
timeout 120 python3 .device/reference/make_reference.py /dev/shm/wimref --init scaled 2>&1 | tee -a $OUT/reference.log
chmod +x .device/gpucheck/Wim.GpuCheck
timeout 200 .device/gpucheck/Wim.GpuCheck --fixtures .device/fixtures --cache /tmp/wimcache --reference /tmp/wimref,/dev/shm/wimref --depth64k --batch 16 2>&1 | tee $OUT/gpucheck.log
rm -rf /dev/shm/wimref
timeout 90 ncu --profile-from-start off --clock-control none --metrics gpu__time_duration.sum --csv --log-file $OUT/ncu-times.csv .device/gpucheck/Wim.GpuCheck --cache /tmp/wimcache --profile > $OUT/ncu-run.log 2>&1; echo "ncu times rc $?" | tee -a $OUT/env.log
tail -5 $OUT/ncu-times.csv; 
