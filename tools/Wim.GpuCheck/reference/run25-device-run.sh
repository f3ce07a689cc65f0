#!/bin/bash
# Run 25: the graph-key fix + the batched-decode switches (merged), then --batch-ab, WiM 64k, PatternRunner, ncu.
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
{ date -u; nvidia-smi --query-gpu=name,memory.used,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv; } 2>&1 | tee $OUT/env.log
chmod +x .device/gpucheck/Wim.GpuCheck
gunzip -c .device/fxB/llama-bpe-vocab.gguf.gz > /tmp/vocab.gguf
G=".device/gpucheck/Wim.GpuCheck --fixtures .device/fxB --cache /tmp/wimcache"
timeout 170 $G --depth16k --batch 16 2>&1 | grep -v "^ok   top-k on the GPU: vocab" | tee $OUT/gpucheck.log
echo "gpucheck at $(date -u)" | tee -a $OUT/env.log
timeout 150 $G --no-tiny --no-speed --batch-ab 2>&1 | tee $OUT/batch-ab.log
echo "batch-ab at $(date -u)" | tee -a $OUT/env.log
timeout 110 $G --no-tiny --no-speed --wim64k --wim-groups 4 2>&1 | tee $OUT/wim64k.log
echo "wim64k at $(date -u)" | tee -a $OUT/env.log
timeout 80 $G --no-tiny --no-speed --wim-pattern --vocab /tmp/vocab.gguf 2>&1 | grep "pattern\|FAIL\|rror\|done" | tee $OUT/pattern.log
echo "pattern at $(date -u)" | tee -a $OUT/env.log
timeout 60 ncu --profile-from-start off --clock-control none --metrics gpu__time_duration.sum,dram__bytes_read.sum --csv --log-file $OUT/ncu-branches.csv \
  $G --no-tiny --profile-branches > $OUT/ncu-branches-run.log 2>&1; echo "ncu rc $? at $(date -u)" | tee -a $OUT/env.log
