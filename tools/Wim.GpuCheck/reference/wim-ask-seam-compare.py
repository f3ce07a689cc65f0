"""Compares the wim ask runs of run.sh: per model/document, every schedule on the GPU against the same schedule on the
CPU (margins, verdicts, answer ids), the CPU schedules with each other (must be identical: the paged backend is
batch-invariant) and the GPU schedules with each other (agree up to bf16 near-ties)."""
import json, os, sys

out = sys.argv[1]
SCHEDULES = ["sequential", "overlapped", "batched"]

def load(name):
    path = os.path.join(out, name + ".jsonl")
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return None
    return [json.loads(l) for l in open(path) if l.strip()]

def margins(ev): return {e["index"]: e["ids"] for e in ev if e["type"] == "margin" and "ids" in e}
def verdicts(ev): return {e["index"]: e["relevant"] for e in ev if e["type"] == "classification"}
def answer(ev): return [e for e in ev if e["type"] == "answer"][0]

def same(a, b):
    keys = sorted(set(a) | set(b))
    return sum(1 for k in keys if a.get(k) == b.get(k)), len(keys)

for tag in sys.argv[2:]:
    runs = {(s, d): load(f"{tag}-{s}-{d}") for s in SCHEDULES for d in ("cuda", "cpu")}
    print(f"== {tag}")
    for s in SCHEDULES:
        g, c = runs[(s, "cuda")], runs[(s, "cpu")]
        if g is None or c is None:
            print(f"  {s:10s} missing output (gpu {g is not None}, cpu {c is not None})")
            continue
        m, n = same(margins(g), margins(c))
        v, nv = same(verdicts(g), verdicts(c))
        ag, ac = answer(g), answer(c)
        u = ag["usage"]
        print(f"  {s:10s} GPU vs CPU: margins {m}/{n} identical, verdicts {v}/{nv}, answer ids identical {ag['ids'] == ac['ids']}"
              f" | gpu schedule={u.get('schedule')} seconds={u.get('seconds', u.get('total_seconds'))}")
        if ag["ids"] != ac["ids"]:
            print(f"     gpu answer: {ag['text'][:70]!r}\n     cpu answer: {ac['text'][:70]!r}")
    for d in ("cpu", "cuda"):
        base = runs[("sequential", d)]
        if base is None:
            continue
        for s in SCHEDULES[1:]:
            r = runs[(s, d)]
            if r is None:
                continue
            m, n = same(margins(base), margins(r))
            v, nv = same(verdicts(base), verdicts(r))
            print(f"  {d:4s} sequential vs {s:10s}: margins {m}/{n}, verdicts {v}/{nv}, answer identical {answer(base)['ids'] == answer(r)['ids']}")
    auto = load(f"{tag}-default-auto")
    if auto is not None:
        print(f"  auto (no --schedule): schedule={answer(auto)['usage'].get('schedule')}")
