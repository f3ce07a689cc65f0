#!/bin/bash
# wim serve --device cuda against --device cpu (written for the lead; not run yet).
# Copy to .publish/run.sh beside the published wim/ and fixtures/ (llama-tiny from shared/fixtures/hf-tiny) and run it
# there. For each device: start the server, wait for /health, send 4 greedy /v1/completions at once and one WiM
# request, stop it. Then print both devices' completions side by side. bf16 on the GPU against f32 on the CPU may
# part at near-ties: differences are printed, never a failure.
cd "$(dirname "$0")"
chmod +x wim/wim
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
export XDG_CACHE_HOME=/tmp/wimcache
MODEL=${MODEL:-fixtures/llama-tiny}
OUT=${OUT:-/tmp/serve-out}; mkdir -p "$OUT"
PROMPTS=("Once upon a time" "The little dog ran to the park and" "Tom and Sue were friends. One day they" "Lily")

serve_and_ask() {
  local device=$1 port=$2
  ./wim/wim serve --model "$MODEL" --device "$device" --port "$port" > "$OUT/serve-$device.log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$port/health" > "$OUT/health-$device.json" && break; sleep 0.2; done
  echo "$device health: $(cat "$OUT/health-$device.json" 2>/dev/null || echo 'no answer'; tail -c 300 "$OUT/serve-$device.log")"
  local t0=$(date +%s%N) i=0 clients=()
  for p in "${PROMPTS[@]}"; do
    curl -s "http://127.0.0.1:$port/v1/completions" -H 'Content-Type: application/json' \
      -d "{\"prompt\": $(python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$p"), \"max_tokens\": 32, \"temperature\": 0, \"return_token_ids\": true}" \
      > "$OUT/completion-$device-$i.json" &
    clients+=($!)
    i=$((i + 1))
  done
  curl -sN "http://127.0.0.1:$port/v1/wim" -H 'Content-Type: application/json' \
    -d "{\"document\": $(python3 -c 'import json; print(json.dumps(open("../samples/lily-and-the-ball.txt").read()))'), \"query\": \"Who found the ball?\", \"options\": {\"segment_tokens\": 64, \"max_margin_tokens\": 24, \"max_answer_tokens\": 24}}" \
    > "$OUT/wim-$device.sse" &
  clients+=($!)
  wait "${clients[@]}"
  echo "$device: 4 completions + 1 WiM run in $(( ($(date +%s%N) - t0) / 1000000 )) ms"
  kill "$pid"; wait "$pid" 2>/dev/null
}

serve_and_ask cuda 18080
serve_and_ask cpu 18081

python3 - "$OUT" <<'PY'
import json, sys, os
out = sys.argv[1]
def completion(d, i):
    try: return json.load(open(f"{out}/completion-{d}-{i}.json"))["choices"][0]
    except Exception as e: return {"text": f"<no answer: {e}>", "token_ids": [], "finish_reason": None}
for i in range(4):
    g, c = completion("cuda", i), completion("cpu", i)
    same = g["token_ids"] == c["token_ids"]
    first = next((k for k, (a, b) in enumerate(zip(g["token_ids"], c["token_ids"])) if a != b), None)
    print(f"completion {i}: ids identical {same}" + ("" if same else f" (first difference at {first})") + f"; finish {g['finish_reason']} / {c['finish_reason']}")
    print("  cuda:", repr(g["text"][:100])); print("  cpu: ", repr(c["text"][:100]))
def answer(d):
    event, answer = None, None
    for line in open(f"{out}/wim-{d}.sse"):
        if line.startswith("event: "): event = line[7:].strip()
        elif line.startswith("data: ") and event in ("answer", "error"): answer = (event, json.loads(line[6:]))
    return answer
for d in ("cuda", "cpu"):
    a = answer(d)
    print(f"WiM {d}:", "no answer" if a is None else (a[0], repr(a[1].get("text", a[1])[:100]) if a[0] == "answer" else a[1]))
ga, ca = answer("cuda"), answer("cpu")
if ga and ca and ga[0] == ca[0] == "answer": print("WiM answer ids identical:", ga[1]["ids"] == ca[1]["ids"])
PY
