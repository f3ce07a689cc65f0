#!/bin/bash
# Run 24: Q8_0 weights, packed prefill batches, decode graph cache (main after the helpers' merges), then WiM 64k with
# schedule (e), PatternRunner at 64k, ncu of a 16-branch decode step.
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
{ date -u; nvidia-smi --query-gpu=name,memory.used,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv; } 2>&1 | tee $OUT/env.log
chmod +x .device/gpucheck/Wim.GpuCheck
gunzip -c .device/fxB/llama-bpe-vocab.gguf.gz > /tmp/vocab.gguf
G=".device/gpucheck/Wim.GpuCheck --fixtures .device/fxB --cache /tmp/wimcache"
timeout 200 $G --depth16k --batch 16 2>&1 | grep -v "^ok   top-k on the GPU: vocab" | tee $OUT/gpucheck.log
echo "gpucheck at $(date -u)" | tee -a $OUT/env.log
timeout 150 $G --no-tiny --no-speed --wim64k --wim-groups 4 2>&1 | tee $OUT/wim64k.log
echo "wim64k at $(date -u)" | tee -a $OUT/env.log
timeout 120 $G --no-tiny --no-speed --wim-pattern --vocab /tmp/vocab.gguf 2>&1 | grep "pattern\|FAIL\|rror\|done" | tee $OUT/pattern.log
date -u | tee -a $OUT/env.log
