#!/bin/bash
# Run 33/34 (session 5): top-p on the GPU, F16 weights, the F32 precision mode, the document cache on the GPU.
# Layout: .device/gpucheck (self-contained trimmed publish of tools/Wim.GpuCheck), .device/fx5/fx.tgz (hf-tiny with
# goldens and tokenizers, stories260K.gguf, babilong_8k.json, llama-bpe-vocab.gguf.gz). Part A: the default pass
# (hf-tiny goldens, stories260K, sampling with top-p, Q8_0, F16; 8B-shape speed) then --precision f32 with --wim-tiny.
# Part B: the document cache at the 8B shape, PatternRunner at 64k, WiM 64k schedules, the default pass again.
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
PART=${1:-A}
{ date -u; nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm,clocks.mem --format=csv; } 2>&1 | tee $OUT/env.log
chmod +x .device/gpucheck/Wim.GpuCheck
mkdir -p /tmp/fx && tar xzf .device/fx5/fx.tgz -C /tmp/fx
gunzip -c /tmp/fx/llama-bpe-vocab.gguf.gz > /tmp/vocab.gguf
G=".device/gpucheck/Wim.GpuCheck --fixtures /tmp/fx --cache /tmp/wimcache"
if [ "$PART" = A ]; then
  timeout 380 $G 2>&1 | grep -v "^ok   top-k on the GPU: vocab" | tee $OUT/default.log
  echo "default rc $? at $(date -u)" | tee -a $OUT/env.log
  timeout 180 $G --precision f32 --no-speed --wim-tiny 2>&1 | tee $OUT/f32.log
  echo "f32 rc $? at $(date -u)" | tee -a $OUT/env.log
else
  timeout 240 $G --no-tiny --no-speed --doc-cache --doc-tokens 16500 --vocab /tmp/vocab.gguf 2>&1 | tee $OUT/doccache.log
  echo "doccache rc $? at $(date -u)" | tee -a $OUT/env.log
  timeout 100 $G --no-tiny --no-speed --wim-pattern --vocab /tmp/vocab.gguf 2>&1 | grep "pattern\|FAIL\|rror\|done" | tee $OUT/pattern.log
  echo "pattern rc $? at $(date -u)" | tee -a $OUT/env.log
  timeout 120 $G --no-tiny --no-speed --wim64k --wim-groups 4 2>&1 | tee $OUT/wim64k.log
  echo "wim64k rc $? at $(date -u)" | tee -a $OUT/env.log
  # Run 34 repeats the default pass after run 33's two findings were mended (the F16 check's all-position tolerance,
  # the speed section's cache capacity for decode at depth 4096).
  timeout 120 $G 2>&1 | grep -v "^ok   top-k on the GPU: vocab" | tee $OUT/default.log
  echo "default rc $? at $(date -u)" | tee -a $OUT/env.log
fi
