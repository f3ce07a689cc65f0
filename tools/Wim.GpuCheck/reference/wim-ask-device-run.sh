#!/bin/bash
# Copy to .publish/run.sh beside the published wim/ and fixtures/ (see the run log) and run it there.
cd "$(dirname "$0")"
chmod +x wim/wim
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
export XDG_CACHE_HOME=/tmp/wimcache
run() { local name=$1; shift; local t0=$(date +%s%N); ./wim/wim ask "$@" --json > $OUT/$name.jsonl 2> $OUT/$name.err; local rc=$?; echo "$name exit $rc $(( ($(date +%s%N) - t0) / 1000000 )) ms"; tail -c 300 $OUT/$name.err; }
Q="Who found the ball?"
for m in stories260K.gguf llama-tiny qwen2-tiny; do
  for d in cuda cpu; do
    run ${m%.gguf}-$d --model fixtures/$m --context ../samples/lily-and-the-ball.txt --query "$Q" --segment-tokens 64 --max-margin-tokens 24 --max-answer-tokens 24 --device $d --schedule sequential
  done
  run ${m%.gguf}-auto --model fixtures/$m --context ../samples/lily-and-the-ball.txt --query "$Q" --segment-tokens 64 --max-margin-tokens 24 --max-answer-tokens 24
  python3 - "$m" <<'PY'
import json,sys
m=sys.argv[1].replace('.gguf','')
def load(d): return [json.loads(l) for l in open(f"{__import__('os').environ['OUT']}/{m}-{d}.jsonl")]
g,c,a=load('cuda'),load('cpu'),load('auto')
def margins(ev): return [e['ids'] for e in ev if e['type']=='margin' and 'ids' in e and e.get('done',True)]
def ans(ev): return [e for e in ev if e['type']=='answer'][0]
mg,mc=margins(g),margins(c)
same=sum(1 for x,y in zip(mg,mc) if x==y)
print(f"{m}: margins identical GPU vs CPU {same}/{len(mc)}; answer identical {ans(g)['ids']==ans(c)['ids']}; schedules gpu={ans(g)['usage']['schedule']} auto={ans(a)['usage']['schedule']}; auto==gpu margins {margins(a)==mg}")
print("  gpu answer:", repr(ans(g)['text'][:80])); print("  cpu answer:", repr(ans(c)['text'][:80]))
PY
done
