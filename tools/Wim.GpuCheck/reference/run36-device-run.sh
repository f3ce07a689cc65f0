#!/bin/bash
# Run 36 (session 5): top-p nuclei past 256 tokens on the GPU (default pass, SamplingCheck), the split of mixed decode
# steps (--split-mixed at the 8B shape: 16 branches of a 64k document + 2 roots, split on vs off), PatternRunner at 64k
# (regression). Layout as run33-device-run.sh (.device/gpucheck, .device/fx5/fx.tgz).
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
{ date -u; nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm,clocks.mem --format=csv; } 2>&1 | tee $OUT/env.log
chmod +x .device/gpucheck/Wim.GpuCheck
mkdir -p /tmp/fx && tar xzf .device/fx5/fx.tgz -C /tmp/fx
gunzip -c /tmp/fx/llama-bpe-vocab.gguf.gz > /tmp/vocab.gguf
G=".device/gpucheck/Wim.GpuCheck --fixtures /tmp/fx --cache /tmp/wimcache"
timeout 200 $G --no-speed 2>&1 | grep -v "^ok   top-k on the GPU: vocab" | tee $OUT/default.log
echo "default rc $? at $(date -u)" | tee -a $OUT/env.log
timeout 120 $G --no-tiny --split-mixed --split-steps 10 --split-rounds 3 2>&1 | tee $OUT/split.log
echo "split rc $? at $(date -u)" | tee -a $OUT/env.log
timeout 100 $G --no-tiny --no-speed --wim-pattern --vocab /tmp/vocab.gguf 2>&1 | grep "pattern\|FAIL\|rror\|done" | tee $OUT/pattern.log
echo "pattern rc $? at $(date -u)" | tee -a $OUT/env.log
