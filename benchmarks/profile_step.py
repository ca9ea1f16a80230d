"""Where a training step's time goes on the GPU: vlmtrack's step (vision features given, as from the
cache; connector; LLM over the stacked sequences; loss at label positions; backward; AdamW) on
synthetic tensors of the bench presets' shapes, timed per variant, then a torch.profiler table.

    python benchmarks/profile_step.py [--preset small] [--batch 128 256] [--compile]
"""
from __future__ import annotations

import argparse
import time

import torch
import yaml

from vlmtrack.bench.run import PRESETS
from vlmtrack.model.backbone import Backbone
from vlmtrack.model.connector import Connector
from vlmtrack.model.kernels import use_fused_kernels


def make(preset: dict, kernels: str):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    with torch.device("cuda"):
        llm = Qwen3ForCausalLM(Qwen3Config(**preset["llm"])).to(torch.bfloat16).eval().requires_grad_(False)
    bb = Backbone(llm, None, None, None, image_token_id=151_000, pad_id=0)
    bb.fused_ce = use_fused_kernels(llm, torch.device("cuda"), kernels, log=lambda *_: None)
    return bb


def batch(b: int, prompt=22, latents=64, label=13, vocab=150_000):
    ids = torch.randint(1, vocab, (b, prompt + latents + label), device="cuda")
    ids[:, prompt:prompt + latents] = 151_000
    labels = torch.full_like(ids, -100)
    labels[:, -label:] = ids[:, -label:]
    return ids, labels


def step_fn(bb, conns, opts, feats, ids, labels):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        visual = torch.stack([c(feats) for c in conns])
        loss = bb.token_losses(ids, labels, visual).sum()
    (loss / labels.numel()).backward()
    for c, opt in zip(conns, opts):
        torch.nn.utils.clip_grad_norm_(c.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)


def timed(bb, b, vision_tokens, vision_dim, steps=20, compile_llm=False, k=1):
    conn = [Connector(vision_dim, bb.llm_dim, 64, 2, 8).cuda() for _ in range(k)]
    opt = [torch.optim.AdamW(c.parameters(), lr=1e-4, fused=True) for c in conn]
    if compile_llm:
        bb.llm.model = torch.compile(bb.llm.model, dynamic=False)
    feats = torch.randn(b, vision_tokens, vision_dim, device="cuda", dtype=torch.bfloat16)
    ids, labels = batch(b)
    t0 = time.perf_counter()
    for _ in range(3):
        step_fn(bb, conn, opt, feats, ids, labels)
    torch.cuda.synchronize()
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        step_fn(bb, conn, opt, feats, ids, labels)
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps, warm, (bb, conn, opt, feats, ids, labels)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--batch", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--stacked", type=int, default=0, help="also time K connectors side by side at batch 4")
    args = ap.parse_args()
    preset = yaml.safe_load(PRESETS.read_text())[args.preset]
    v = preset["vision"]
    tokens, vdim = (v["image_size"] // v["patch_size"]) ** 2, v["hidden_size"]
    print("| variant | batch | step s | samples/s | warm-up s |")
    print("|---|---|---|---|---|")
    last = None
    for kernels in ("torch", "liger"):
        bb = make(preset, kernels)
        # the plain path materialises [label tokens, vocab] logits: its largest batch would not fit
        if args.stacked:
            for k in (1, args.stacked):
                last = None
                s, warm, last = timed(bb, 4, tokens, vdim, k=k)
                print(f"| {kernels}, {k} connector(s) side by side | {k} x 4 | {s:.4f} | {4 * k / s:.0f} | {warm:.1f} |",
                      flush=True)
        for b in args.batch if kernels == "liger" else args.batch[:2]:
            last = None
            torch.cuda.empty_cache()
            s, warm, last = timed(bb, b, tokens, vdim)
            print(f"| {kernels} | {b} | {s:.4f} | {b / s:.0f} | {warm:.1f} |", flush=True)
        if kernels == "liger" and args.compile:
            last = None
            s, warm, last = timed(bb, args.batch[-1], tokens, vdim, compile_llm=True)
            print(f"| liger + torch.compile(LLM) | {args.batch[-1]} | {s:.4f} | {args.batch[-1] / s:.0f} | {warm:.1f} |",
                  flush=True)
        if kernels == "torch":
            del bb
            last = None
            torch.cuda.empty_cache()
    from torch.profiler import ProfilerActivity, profile
    args_ = last
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            step_fn(*args_)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=22, max_name_column_width=60))


if __name__ == "__main__":
    main()
