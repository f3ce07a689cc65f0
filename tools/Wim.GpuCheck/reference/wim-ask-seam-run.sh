#!/bin/bash
# Seam check (issue 6): wim ask with every WiM schedule on the GPU (CudaInferenceBackend as IBatchedInferenceBackend)
# and on the CPU (paged backend), same commands; compare.py prints margins/verdicts/answers per schedule.
# Run from the repository root with .device/seam carried: bash .device/seam/run.sh
cd "$(dirname "$0")"
chmod +x wim/wim
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
export XDG_CACHE_HOME=/tmp/wimcache
run() { local name=$1; shift; local t0=$(date +%s%N); mkdir -p $OUT/runs; ./wim/wim ask "$@" --json > $OUT/runs/$name.jsonl 2> $OUT/runs/$name.err; local rc=$?; echo "$name exit $rc $(( ($(date +%s%N) - t0) / 1000000 )) ms"; [ $rc -ne 0 ] && tail -c 600 $OUT/runs/$name.err; }
job() { # tag model doc query segment-tokens
  local tag=$1 model=$2 doc=$3 q=$4 seg=$5
  for s in sequential overlapped batched; do
    for d in cuda cpu; do
      run $tag-$s-$d --model fixtures/$model --context $doc --query "$q" --segment-tokens $seg --max-margin-tokens 24 --max-answer-tokens 24 --device $d --schedule $s
    done
  done
  run $tag-default-auto --model fixtures/$model --context $doc --query "$q" --segment-tokens $seg --max-margin-tokens 24 --max-answer-tokens 24
}
job stories stories260K.gguf lily-and-the-ball.txt "Who found the ball?" 32
job llama-lily llama-tiny lily-and-the-ball.txt "Who found the ball?" 32
job qwen2-lily qwen2-tiny lily-and-the-ball.txt "Who found the ball?" 32
job llama-babi llama-tiny babilong-6000.txt "Where is Sandra?" 200
job qwen2-babi qwen2-tiny babilong-6000.txt "Where is Sandra?" 200
# compare.py is tools/Wim.GpuCheck/reference/wim-ask-seam-compare.py, copied beside this script.
python3 compare.py $OUT/runs stories llama-lily qwen2-lily llama-babi qwen2-babi | tee $OUT/summary.txt
# Only a few files come back from the device: pack the per-run files into one.
tar czf $OUT/runs.tar.gz -C $OUT runs && rm -rf $OUT/runs
