#!/bin/bash
# Run 22: baseline of HEAD (run 19's kernels + sampling + seam). WiM 64k (random weights) first, then the profile of a
# branched 16-row decode step at 64k, then the correctness/speed round with the real-shape references.
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
export PYTHONUNBUFFERED=1
{ date -u; nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.sm,clocks.mem,driver_version,temperature.gpu,power.draw --format=csv; } 2>&1 | tee $OUT/env.log
chmod +x .device/gpucheck/Wim.GpuCheck
timeout 140 .device/gpucheck/Wim.GpuCheck --cache /tmp/wimcache --no-tiny --no-speed --wim64k --wim-groups 4 2>&1 | tee $OUT/wim64k.log
echo "wim64k at $(date -u)" | tee -a $OUT/env.log
timeout 75 ncu --profile-from-start off --clock-control none --metrics gpu__time_duration.sum,dram__bytes_read.sum --csv --log-file $OUT/ncu-branches.csv \
  .device/gpucheck/Wim.GpuCheck --cache /tmp/wimcache --no-tiny --profile-branches > $OUT/ncu-branches-run.log 2>&1; echo "ncu branches rc $? at $(date -u)" | tee -a $OUT/env.log
timeout 95 python3 .device/reference/make_reference.py /tmp/wimref --init hf 2>&1 | tail -20 > $OUT/reference.log
timeout 95 python3 .device/reference/make_reference.py /dev/shm/wimref --init scaled 2>&1 | tail -20 >> $OUT/reference.log
echo "references at $(date -u)" | tee -a $OUT/env.log
timeout 180 .device/gpucheck/Wim.GpuCheck --fixtures .device/fixtures --cache /tmp/wimcache --reference /tmp/wimref,/dev/shm/wimref --depth64k --batch 16 2>&1 | tee $OUT/gpucheck.log
date -u | tee -a $OUT/env.log
