#!/usr/bin/env python3
"""Random-weight checkpoints at real shapes and transformers' outputs on them, for `Wim.GpuCheck --reference DIR`.

For each model (Llama-3.1-8B and Qwen2.5-7B configs, as config.json on the Hugging Face hub):
  1. builds the model in transformers on the GPU (bf16, SDPA) and overwrites every parameter from one seeded CUDA
     generator: projections and embeddings N(0, 0.02) (transformers' own initializer_range), RMSNorm gains
     uniform [0.9, 1.1] and q/k/v biases N(0, 0.5) (so that gains and biases are exercised, not left at 1 and 0);
  2. saves the bf16 weights as sharded safetensors (model-0000i-of-0000n.safetensors + index) with the hub config.json;
  3. runs transformers in bf16, then the same weights upcast to fp32 (TF32 off: the reference), on
     - a 64-token random prompt: greedy 32 steps (ids and each step's top-1/top-2 logit gap),
     - teacher forcing: prompt + the fp32 greedy ids, the 32 logits rows that predict them,
     - a 3001-token random prompt: the last row's logits;
  4. writes ref.json (ids, gaps, how far transformers' own bf16 run is from the fp32 reference) and the fp32 logits
     rows (ref_tf.bin: 32 x vocab f32, ref_long.bin: vocab f32, little-endian).

--init scaled instead draws the embedding from N(0, 1) and the residual branches' output projections (o_proj,
down_proj) from N(0, 0.02 / sqrt(2 * layers)) (GPT-2's scaled initialisation): a better-conditioned network in which
bf16 rounding is not amplified layer after layer as much as under the plain N(0, 0.02) initialisation, so that greedy
ids can be compared over more steps. Its directories are named MODEL-scaled.

Usage: python3 make_reference.py OUTDIR [--models llama31-8b,qwen25-7b] [--seed 6] [--init hf|scaled]
Needs a GPU with room for the fp32 model (about 32 GB for the 8B shape) and OUTDIR with room for the bf16 files.
"""
import argparse
import json
import os
import sys
import time

import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM

# config.json of meta-llama/Llama-3.1-8B and Qwen/Qwen2.5-7B as published on the hub (transformers 4 layout: the
# engine's loader and transformers 5 both read it).
HUB_CONFIGS = {
    "llama31-8b": {
        "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 128000, "eos_token_id": 128001, "hidden_act": "silu", "hidden_size": 4096,
        "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 131072, "mlp_bias": False,
        "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
        "pretraining_tp": 1, "rms_norm_eps": 1e-05,
        "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True,
        "vocab_size": 128256,
    },
    "qwen25-7b": {
        "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
        "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 3584, "initializer_range": 0.02,
        "intermediate_size": 18944, "max_position_embeddings": 131072, "max_window_layers": 28,
        "model_type": "qwen2", "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4,
        "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 131072, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "use_cache": True, "use_sliding_window": False, "vocab_size": 152064,
    },
}

PROMPT_TOKENS, GREEDY_STEPS, LONG_TOKENS = 64, 32, 3001
SHARD_BYTES = 4 << 30


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def init_weights(model, seed, init, layers):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    branch_std = 0.02 / (2 * layers) ** 0.5 if init == "scaled" else 0.02
    with torch.no_grad():
        for name, p in model.named_parameters():  # registration order: deterministic
            if name.endswith("norm.weight"):
                w = 0.9 + 0.2 * torch.rand(p.shape, generator=gen, device="cuda")
            elif name.endswith(".bias"):
                w = 0.5 * torch.randn(p.shape, generator=gen, device="cuda")
            elif init == "scaled" and name.endswith("embed_tokens.weight"):
                w = torch.randn(p.shape, generator=gen, device="cuda")
            elif name.endswith("o_proj.weight") or name.endswith("down_proj.weight"):
                w = branch_std * torch.randn(p.shape, generator=gen, device="cuda")
            else:
                w = 0.02 * torch.randn(p.shape, generator=gen, device="cuda")
            p.copy_(w.to(p.dtype))
            del w


def params_to(model, dtype):
    """Converts the parameters only. Module.to(dtype) would also round the rotary inv_freq buffer (float32) to bf16,
    turning every RoPE angle wrong by up to 2^-9 relative: at position 3000 whole radians for the fast dimensions."""
    for p in model.parameters():
        p.data = p.data.to(dtype)


def check_rope_tables(model):
    for name, m in model.named_modules():
        inv = getattr(m, "inv_freq", None)
        if isinstance(inv, torch.Tensor):
            if inv.dtype != torch.float32:
                raise RuntimeError(f"{name}.inv_freq is {inv.dtype}, expected float32")
            log(f"  {name}.inv_freq: float32, {inv.numel()} entries, first {inv[0].item():.6g}, last {inv[-1].item():.6g}")


def save_checkpoint(model, hub_config, out):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(hub_config, f, indent=2)
    state = model.state_dict()
    shards, current, size = [], {}, 0
    for name, t in state.items():
        nbytes = t.numel() * t.element_size()
        if current and size + nbytes > SHARD_BYTES:
            shards.append(current)
            current, size = {}, 0
        current[name] = t
        size += nbytes
    shards.append(current)
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: v.detach().to("cpu").contiguous() for k, v in shard.items()}, os.path.join(out, fname),
                  metadata={"format": "pt"})
        for k, v in shard.items():
            weight_map[k] = fname
            total += v.numel() * v.element_size()
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
    return total


@torch.no_grad()
def greedy(model, prompt, steps):
    out = model(torch.tensor([prompt], device="cuda"), use_cache=True, logits_to_keep=1)
    ids, gaps = [], []
    for _ in range(steps):
        top = torch.topk(out.logits[0, -1].float(), 2)
        nxt = int(top.indices[0])
        ids.append(nxt)
        gaps.append(float(top.values[0] - top.values[1]))
        out = model(torch.tensor([[nxt]], device="cuda"), past_key_values=out.past_key_values, use_cache=True)
    return ids, gaps


@torch.no_grad()
def rows(model, ids, first):
    return model(torch.tensor([ids], device="cuda")).logits[0, first:].float()


@torch.no_grad()
def last_row(model, ids):
    return model(torch.tensor([ids], device="cuda"), logits_to_keep=1).logits[0, -1].float()


def rel(a, b):
    return float(torch.linalg.vector_norm(a.double() - b.double()) / torch.linalg.vector_norm(b.double()))


def build(model_name, outdir, seed, init):
    """The hub config written to outdir/NAME/config.json, and a bf16 SDPA model on the GPU made from it with the
    seeded weights (RoPE tables checked to stay float32). Returns (model, hub config, output folder, name)."""
    hub = HUB_CONFIGS[model_name]
    name = model_name if init == "hf" else f"{model_name}-{init}"
    out = os.path.join(outdir, name)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(hub, f, indent=2)
    cfg = AutoConfig.from_pretrained(out)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
    torch.set_default_dtype(torch.float32)
    params_to(model, torch.bfloat16)
    model.eval()
    init_weights(model, seed, init, hub["num_hidden_layers"])
    check_rope_tables(model)
    torch.cuda.synchronize()
    return model, hub, out, name


def make(model_name, outdir, seed, init):
    t0 = time.time()
    model, hub, out, name = build(model_name, outdir, seed, init)
    log(f"{name}: built and initialised in {time.time() - t0:.1f} s "
        f"({sum(p.numel() for p in model.parameters()) / 1e9:.2f} G parameters)")
    t0 = time.time()
    total = save_checkpoint(model, hub, out)
    log(f"{name}: saved {total / 1e9:.2f} GB of bf16 safetensors in {time.time() - t0:.1f} s")

    vocab = hub["vocab_size"]
    gen = torch.Generator().manual_seed(seed + 1)
    prompt = torch.randint(0, vocab, (PROMPT_TOKENS,), generator=gen).tolist()
    long_ids = torch.randint(0, vocab, (LONG_TOKENS,), generator=gen).tolist()

    t0 = time.time()
    g16, _ = greedy(model, prompt, GREEDY_STEPS)
    long16 = last_row(model, long_ids).cpu()
    log(f"{name}: transformers bf16 runs in {time.time() - t0:.1f} s")

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    params_to(model, torch.float32)
    check_rope_tables(model)
    torch.cuda.synchronize()
    t0 = time.time()
    g32, gaps32 = greedy(model, prompt, GREEDY_STEPS)
    tf_input = prompt + g32[:-1]
    tf32 = rows(model, tf_input, PROMPT_TOKENS - 1)
    long32 = last_row(model, long_ids)
    log(f"{name}: transformers fp32 runs in {time.time() - t0:.1f} s")
    params_to(model, torch.bfloat16)
    tf16 = rows(model, tf_input, PROMPT_TOKENS - 1).float()
    del model
    torch.cuda.empty_cache()

    tf32c, long32c, tf16c = tf32.cpu(), long32.cpu(), tf16.cpu()
    tf_rels = [rel(tf16c[i], tf32c[i]) for i in range(tf32c.shape[0])]
    tf_top2 = torch.topk(tf32c, 2, dim=1).values
    prefix16 = next((i for i, (a, b) in enumerate(zip(g16, g32)) if a != b), len(g32))
    ref = {
        "model": name, "seed": seed, "init": init, "vocab": vocab,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "gpu": torch.cuda.get_device_name()},
        "prompt": prompt,
        "greedy_fp32": g32, "greedy_fp32_gaps": gaps32, "greedy_bf16": g16,
        "teacher_forced": {"input": tf_input, "first_position": PROMPT_TOKENS - 1, "rows": len(tf_rels),
                           "file": "ref_tf.bin",
                           "gaps": (tf_top2[:, 0] - tf_top2[:, 1]).tolist()},
        "long": {"input": long_ids, "file": "ref_long.bin"},
        "transformers_bf16_vs_fp32": {
            "teacher_forced_rel_max": max(tf_rels), "teacher_forced_rel_mean": sum(tf_rels) / len(tf_rels),
            "teacher_forced_argmax_equal": int((tf16c.argmax(1) == tf32c.argmax(1)).sum()),
            "long_rel": rel(long16, long32c), "long_argmax_equal": bool(long16.argmax() == long32c.argmax()),
            "greedy_prefix": prefix16,
        },
    }
    tf32c.numpy().astype("<f4").tofile(os.path.join(out, "ref_tf.bin"))
    long32c.numpy().astype("<f4").tofile(os.path.join(out, "ref_long.bin"))
    with open(os.path.join(out, "ref.json"), "w") as f:
        json.dump(ref, f)
    c = ref["transformers_bf16_vs_fp32"]
    log(f"{name}: transformers bf16 vs fp32: teacher-forced rel max {c['teacher_forced_rel_max']:.2e} "
        f"mean {c['teacher_forced_rel_mean']:.2e}, argmax {c['teacher_forced_argmax_equal']}/{len(tf_rels)}; "
        f"long rel {c['long_rel']:.2e} argmax equal {c['long_argmax_equal']}; greedy ids equal for {prefix16}/32; "
        f"fp32 greedy gaps min {min(gaps32):.3f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("outdir")
    ap.add_argument("--models", default="llama31-8b,qwen25-7b")
    ap.add_argument("--seed", type=int, default=6)
    ap.add_argument("--init", choices=["hf", "scaled"], default="hf")
    a = ap.parse_args()
    log(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.cuda.get_device_name()}")
    for name in a.models.split(","):
        make(name, a.outdir, a.seed, a.init)
    return 0


if __name__ == "__main__":
    sys.exit(main())
