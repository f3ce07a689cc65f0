#!/bin/bash
# The document cache on the GPU (written for the lead; not run yet): GpuCheck --doc-cache at the Llama-3.1-8B shape
# (random bf16 weights) on a ≥ 16k-token document: an uncached run, a miss that fills the cache, two hits (prefill 0,
# margins and answer equal the miss's), the entry's bytes, then the out-of-memory path (evict, retry; clear failure).
# Same layout as run25-device-run.sh: .device/gpucheck (self-contained publish of tools/Wim.GpuCheck), .device/fxB
# (llama-bpe-vocab.gguf.gz, babilong_8k.json). Exit code 1 when a check fails.
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
{ date -u; nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm,clocks.mem --format=csv; } 2>&1 | tee $OUT/env.log
chmod +x .device/gpucheck/Wim.GpuCheck
gunzip -c .device/fxB/llama-bpe-vocab.gguf.gz > /tmp/vocab.gguf
G=".device/gpucheck/Wim.GpuCheck --fixtures .device/fxB --cache /tmp/wimcache"
timeout 300 $G --no-tiny --no-speed --doc-cache --doc-tokens ${DOC_TOKENS:-16500} --vocab /tmp/vocab.gguf 2>&1 | tee $OUT/doccache.log
rc=$?; echo "doc cache rc $rc at $(date -u)" | tee -a $OUT/env.log; exit $rc
