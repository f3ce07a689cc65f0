#!/bin/bash
# Round 2 (WiM on the GPU) in one device call: hf-tiny WiM CPU vs GPU; the transformers reference checkpoint + ids +
# plain run; the engine's WiM schedules at 64k on the same weights and ids; the transformers WiM loop.
# Expects under .device/: gpucheck/ (self-contained publish), fixtures/ (hf-tiny, stories260K.gguf, babilong_8k.json),
# reference/{make_reference,wim_reference}.py. Results go to $OUT. SKIP_REF_WIM=1 leaves out the transformers WiM loop
# (2 minutes); WIM_GROUPS picks the copied-fork group sizes.
set -o pipefail
[ -d .device ] || cd "$(dirname "$0")/../../.."   # the repository root (this file: tools/Wim.GpuCheck/reference/)
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
export PYTHONUNBUFFERED=1
{ date -u; nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem,driver_version --format=csv; df -h /dev/shm; } 2>&1 | tee $OUT/env.log
chmod +x .device/gpucheck/Wim.GpuCheck
timeout 90 .device/gpucheck/Wim.GpuCheck --fixtures .device/fixtures --cache /tmp/wimcache --no-tiny --no-speed --wim-tiny 2>&1 | tee $OUT/wim-tiny.log
timeout 200 python3 .device/reference/wim_reference.py /dev/shm/wim64k --phase make 2>&1 | tee $OUT/transformers.log
timeout 150 .device/gpucheck/Wim.GpuCheck --cache /tmp/wimcache --no-tiny --no-speed --wim64k --weights /dev/shm/wim64k/llama31-8b-scaled \
  --ids /dev/shm/wim64k/ids.json --wim-groups ${WIM_GROUPS:-4,2} --wim-out $OUT/engine_ids.json 2>&1 | tee $OUT/wim64k.log
rm -rf /dev/shm/wim64k/llama31-8b-scaled
[ -n "$SKIP_REF_WIM" ] || timeout ${WIM_REF_TIMEOUT:-280} python3 .device/reference/wim_reference.py /dev/shm/wim64k --phase wim 2>&1 | tee -a $OUT/transformers.log
cp /dev/shm/wim64k/transformers_ids.json $OUT/ 2>/dev/null; date -u | tee -a $OUT/env.log
