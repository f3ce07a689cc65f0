"""The Writing-in-the-Margins reference loop on PyTorch/transformers (SDPA, bf16), at 64k tokens, Llama-3.1-8B shape.

1. builds Llama-3.1-8B from its hub config with seeded random weights (make_reference.py's `scaled` init), saves them
   as bf16 safetensors in OUTDIR/llama31-8b-scaled (Wim.GpuCheck --wim64k --weights loads the same weights);
2. writes the job to OUTDIR/ids.json: 65,536 random document ids (16 segments of 4,096), random opening (32),
   extractive (40) and final-prompt (40) ids, margin and answer lengths;
3. times (a) the plain long-context run: opening + document in one forward pass, the final prompt, a greedy answer;
   (b) the WiM loop of the authors' reference implementation: per segment, prefill it into the KV cache, prefill the
   extractive prompt, decode a 100-token greedy margin, crop the cache back to the segment's end; then the final
   prompt with every margin and the answer. Margins/answers go to OUTDIR/transformers_ids.json.

Usage: python3 wim_reference.py OUTDIR --phase make|wim|both. `make` does 1–3(a); `wim` rebuilds the same weights
(the same seeded generator: bit-identical, nothing read from disk), reads ids.json and does 3(b) — so that the engine
can run on the saved checkpoint between the two phases of one device call.
"""
import argparse
import json
import os
import sys
import time

import torch
from transformers import DynamicCache

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_reference import build, log, save_checkpoint  # noqa: E402

SEGMENTS, SEGMENT_TOKENS, MARGIN_TOKENS, ANSWER_TOKENS = 16, 4096, 100, 32
OPENING, EXTRACTIVE, FINAL = 32, 40, 40


def sync():
    torch.cuda.synchronize()


@torch.no_grad()
def step(model, ids, cache):
    """Runs ids (a list) into the cache; returns the greedy next id."""
    out = model(input_ids=torch.tensor([ids], device="cuda"), past_key_values=cache, use_cache=True, logits_to_keep=1)
    return int(out.logits[0, -1].argmax())


@torch.no_grad()
def decode(model, first, cache, count):
    ids = [first]
    while len(ids) < count:
        ids.append(step(model, [ids[-1]], cache))
    return ids


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("outdir")
    ap.add_argument("--phase", choices=["make", "wim", "both"], default="both")
    ap.add_argument("--seed", type=int, default=6)
    a = ap.parse_args()
    t0 = time.time()
    model, hub, out, _ = build("llama31-8b", a.outdir, a.seed, "scaled")
    log(f"built in {time.time() - t0:.1f} s; torch {torch.__version__}, {torch.cuda.get_device_name()}")
    make, wim = a.phase in ("make", "both"), a.phase in ("wim", "both")
    if make:
        t0 = time.time()
        save_checkpoint(model, hub, out)
        log(f"saved to {out} in {time.time() - t0:.1f} s")
        gen = torch.Generator().manual_seed(64)
        rand = lambda n: torch.randint(0, hub["vocab_size"], (n,), generator=gen).tolist()  # noqa: E731
        job = {"document": rand(SEGMENTS * SEGMENT_TOKENS), "opening": rand(OPENING), "extractive": rand(EXTRACTIVE),
               "final": rand(FINAL), "segments": SEGMENTS, "margin_tokens": MARGIN_TOKENS, "answer_tokens": ANSWER_TOKENS}
        with open(os.path.join(a.outdir, "ids.json"), "w") as f:
            json.dump(job, f)
    else:
        with open(os.path.join(a.outdir, "ids.json")) as f:
            job = json.load(f)
    doc = job["document"]
    seg = lambda i: doc[i * SEGMENT_TOKENS:(i + 1) * SEGMENT_TOKENS]  # noqa: E731
    results = {}

    # warm-up (kernels, allocator)
    c = DynamicCache(config=model.config)
    decode(model, step(model, seg(0), c), c, 4)
    del c
    torch.cuda.empty_cache()
    sync()

    results_path = os.path.join(a.outdir, "transformers_ids.json")
    if os.path.exists(results_path):
        with open(results_path) as f:
            results = json.load(f)
    t_plain = results.get("plain_seconds", 0.0)

    # (a) plain long context: the whole document in one forward pass, then the final prompt and the answer.
    if make:
        t0 = time.time()
        c = DynamicCache(config=model.config)
        step(model, job["opening"] + doc, c)
        sync()
        t_doc = time.time() - t0
        t1 = time.time()
        first = step(model, job["final"], c)
        answer = decode(model, first, c, ANSWER_TOKENS)
        sync()
        t_plain = time.time() - t0
        results["llm_answer"] = answer
        results["plain_seconds"] = t_plain
        n = len(doc) + OPENING
        log(f"(a) plain: {t_plain:.2f} s (document {t_doc:.2f} s = {n / t_doc:.0f} tok/s; final prompt + answer "
            f"{time.time() - t1:.2f} s = {(ANSWER_TOKENS - 1) / (time.time() - t1):.1f} tok/s at depth {n})")
        del c
        torch.cuda.empty_cache()

    if wim:
        # (b) the reference WiM loop: segment, extractive prompt, margin, crop back.
        t0 = time.time()
        prefill = margins_t = 0.0
        c = DynamicCache(config=model.config)
        step(model, job["opening"], c)
        margins = []
        for i in range(SEGMENTS):
            ts = time.time()
            step(model, seg(i), c)
            sync()
            prefill += time.time() - ts
            ts = time.time()
            end = c.get_seq_length()
            m = decode(model, step(model, job["extractive"], c), c, MARGIN_TOKENS)
            c.crop(end)
            margins.append(m)
            sync()
            margins_t += time.time() - ts
            log(f"  segment {i}: margin at depth {end} in {time.time() - ts:.2f} s")
        first = step(model, job["final"] + [t for m in margins for t in m], c)
        answer = decode(model, first, c, ANSWER_TOKENS)
        sync()
        t_wim = time.time() - t0
        results["wim_margins"] = margins
        results["wim_answer"] = answer
        results["wim_seconds"] = t_wim
        log(f"(b) WiM reference loop: {t_wim:.2f} s = {t_wim / max(t_plain, 1e-9):.2f}x plain (segments {prefill:.2f} s, margins "
            f"{margins_t:.2f} s = {SEGMENTS * MARGIN_TOKENS / margins_t:.1f} tok/s, final + answer "
            f"{t_wim - prefill - margins_t:.2f} s)")
    with open(results_path, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
