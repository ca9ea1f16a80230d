"""Where a training step's time goes on the GPU: vlmtrack's step (vision features given, as from the
cache; connector; LLM over the stacked sequences; loss at label positions; backward; AdamW) on
synthetic tensors of the bench presets' shapes, timed per variant, then a torch.profiler table.

    python benchmarks/profile_step.py [--preset small] [--batch 128 256] [--compile]
    python benchmarks/profile_step.py --graphs 6     # the CUDA-graph step of 6 connectors x 4, part by part
    python benchmarks/profile_step.py --graphs 6 --graph-kernels liger layers-compiled
        # ... with liger's kernels, and with each decoder layer torch.compile'd (plain kernels) inside the graph
    python benchmarks/profile_step.py --batch 256 --variants torch liger torch+compile liger+flash
        # each variant: kernels (torch|liger), +compile (torch.compile of the LLM), +flash|+cudnn|+efficient
        # (the SDPA backend forced for the whole step), +nocudnn (cuDNN attention off from the compile
        # on: the backend is chosen when the graph is traced), +cconn (the connectors compiled too),
        # +lengths (warm up on three sequence lengths);
        # kernels `liger` with +compile = liger's fused linear cross-entropy only, as train.compile does
"""
from __future__ import annotations

import argparse
import time

import torch
import yaml

from vlmtrack.bench.run import PRESETS
from vlmtrack.model.backbone import Backbone
from vlmtrack.model.connector import Connector
from vlmtrack.model.kernels import compile_body, compile_connector, use_fused_kernels


def make(preset: dict, kernels: str, compiled: bool = False):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    with torch.device("cuda"):
        llm = Qwen3ForCausalLM(Qwen3Config(**preset["llm"])).to(torch.bfloat16).eval().requires_grad_(False)
    bb = Backbone(llm, None, None, None, image_token_id=151_000, pad_id=0)
    bb.fused_ce = use_fused_kernels(llm, torch.device("cuda"), kernels, log=lambda *_: None, compiled=compiled)
    if compiled:
        bb.compiled_body = compile_body(llm)
    return bb


def batch(b: int, prompt=22, latents=64, label=13, vocab=150_000):
    ids = torch.randint(1, vocab, (b, prompt + latents + label), device="cuda")
    ids[:, prompt:prompt + latents] = 151_000
    labels = torch.full_like(ids, -100)
    labels[:, -label:] = ids[:, -label:]
    return ids, labels


SDPA_BACKEND = None  # set per variant: the SDPA backend forced for the step


def step_fn(bb, conns, opts, feats, ids, labels):
    from contextlib import nullcontext

    from torch.nn.attention import sdpa_kernel

    with torch.autocast("cuda", dtype=torch.bfloat16), (sdpa_kernel(SDPA_BACKEND) if SDPA_BACKEND else nullcontext()):
        visual = torch.stack([c(feats) for c in conns])
        loss = bb.token_losses(ids, labels, visual).sum()
    (loss / labels.numel()).backward()
    for c, opt in zip(conns, opts):
        torch.nn.utils.clip_grad_norm_(c.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)


def timed(bb, b, vision_tokens, vision_dim, steps=20, compile_llm=False, k=1, lengths=False, compile_conn=False):
    conn = [Connector(vision_dim, bb.llm_dim, 64, 2, 8).cuda() for _ in range(k)]
    conn = [compile_connector(c) for c in conn] if compile_conn else conn
    opt = [torch.optim.AdamW(c.parameters(), lr=1e-4, fused=True) for c in conn]
    if compile_llm and bb.compiled_body is None:
        bb.compiled_body = compile_body(bb.llm)
    feats = torch.randn(b, vision_tokens, vision_dim, device="cuda", dtype=torch.bfloat16)
    ids, labels = batch(b)
    t0 = time.perf_counter()
    for extra in ((8, 24) if lengths else ()):  # two more lengths first: a dynamic-shape compile covers all
        step_fn(bb, conn, opt, feats, *batch(b, label=13 + extra))
    for _ in range(3):
        step_fn(bb, conn, opt, feats, ids, labels)
    torch.cuda.synchronize()
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        step_fn(bb, conn, opt, feats, ids, labels)
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps, warm, (bb, conn, opt, feats, ids, labels)


def host_batch(b: int, vision_tokens: int, vision_dim: int):
    from vlmtrack.data.dataset import Batch

    ids, labels = (t.cpu() for t in batch(b))
    feats = torch.randn(b, vision_tokens, vision_dim, dtype=torch.bfloat16).pin_memory()
    n = (labels != -100).sum(1)
    return Batch(ids, torch.ones_like(ids), labels, None, ["short"] * b, n, n, torch.zeros(b, dtype=torch.bool),
                 [str(i) for i in range(b)], [""] * b, [], feats)


def graph_parts(bb, k: int, vision_tokens: int, vision_dim: int, steps: int = 100) -> None:
    """Per step of k connectors x 4 samples: the graph replay alone (GPU time), the host preparation, the
    whole graphed micro-step, and the optimizer phase of the k trials (once per accumulation window)."""
    from vlmtrack.train.graphed import GraphedSteps, static_inputs

    conns = [Connector(vision_dim, bb.llm_dim, 64, 2, 8).cuda() for _ in range(k)]
    opts = [torch.optim.AdamW(c.parameters(), lr=1e-4, fused=True) for c in conns]
    graphs = GraphedSteps(bb, conns, torch.bfloat16, 64, log=print)
    hb = host_batch(4, vision_tokens, vision_dim)
    t0 = time.perf_counter()
    assert graphs.step(hb, 52) is not None, graphs.failed
    torch.cuda.synchronize()
    capture = time.perf_counter() - t0

    def per_step(fn) -> float:
        fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) / steps

    (graph, *_), = graphs.graphs.values()

    def optimizer_phase():
        for c, opt in zip(conns, opts):
            torch.nn.utils.clip_grad_norm_(c.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=False)

    print(f"| part ({k} connectors x 4 samples) | ms |")
    print("|---|---|")
    print(f"| capture (warm-up + record, once per shape) | {1000 * capture:.0f} |")
    print(f"| graph replay alone (GPU) | {1000 * per_step(graph.replay):.2f} |")
    print(f"| host preparation (static_inputs) | {1000 * per_step(lambda: static_inputs(bb, hb, 64)):.2f} |")
    print(f"| graphed micro-step (preparation + copies + replay) | {1000 * per_step(lambda: graphs.step(hb, 52)):.2f} |")
    print(f"| optimizer phase of {k} trials (clip, fused AdamW, zero) | {1000 * per_step(optimizer_phase):.2f} |",
          flush=True)
    from torch.profiler import ProfilerActivity, profile

    inputs = {name: value.cuda() for name, value in static_inputs(bb, hb, 64).items()}
    print(f"| the same step eagerly (no graph) | {1000 * per_step(lambda: graphs._forward_backward(inputs)):.2f} |",
          flush=True)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            graphs._forward_backward(inputs)
        torch.cuda.synchronize()
    # self time: each kernel once, so the rows add up to the step's GPU time
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=30, max_name_column_width=70))


def time_variants(preset: dict, variants: list[str], batches: list[int], tokens: int, vdim: int) -> None:
    global SDPA_BACKEND
    from torch.nn.attention import SDPBackend

    backends = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION}
    print("| variant | batch | step s | samples/s | warm-up s | peak GiB |")
    print("|---|---|---|---|---|---|")
    for variant in variants:
        kernels, *extras = variant.split("+")
        SDPA_BACKEND = next((backends[e] for e in extras if e in backends), None)
        torch._dynamo.reset()  # each variant compiles afresh (a cached graph would keep the last one's kernels)
        torch.backends.cuda.enable_cudnn_sdp("nocudnn" not in extras)
        bb = make(preset, kernels, compiled="compile" in extras)
        for b in batches:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            s, warm, _ = timed(bb, b, tokens, vdim, lengths="lengths" in extras, compile_conn="cconn" in extras)
            peak = torch.cuda.max_memory_allocated() / 2**30
            print(f"| {variant} | {b} | {s:.4f} | {b / s:.0f} | {warm:.1f} | {peak:.1f} |", flush=True)
        del bb
        torch.cuda.empty_cache()
    SDPA_BACKEND = None
    torch.backends.cuda.enable_cudnn_sdp(True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--batch", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--stacked", type=int, default=0, help="also time K connectors side by side at batch 4")
    ap.add_argument("--graphs", type=int, default=0, help="only time the CUDA-graph step of K connectors x 4")
    ap.add_argument("--graph-kernels", nargs="+", default=["torch", "liger"],
                    choices=["torch", "liger", "layers-compiled"], help="the kernels of --graphs' step")
    ap.add_argument("--variants", nargs="+", help="time these variants at each --batch (see the docstring)")
    args = ap.parse_args()
    preset = yaml.safe_load(PRESETS.read_text())[args.preset]
    v = preset["vision"]
    tokens, vdim = (v["image_size"] // v["patch_size"]) ** 2, v["hidden_size"]
    if args.variants:
        return time_variants(preset, args.variants, args.batch, tokens, vdim)
    if args.graphs:
        for kernels in args.graph_kernels:
            print(f"\n### {kernels} kernels")
            bb = make(preset, "torch" if kernels == "layers-compiled" else kernels)
            if kernels == "layers-compiled":  # inductor's fused kernels, replayed inside our graph
                t0 = time.perf_counter()
                bb.llm.model.layers = torch.nn.ModuleList(torch.compile(layer) for layer in bb.llm.model.layers)
                print(f"(layers wrapped in {time.perf_counter() - t0:.1f} s; they compile at the capture's warm-up)")
            graph_parts(bb, args.graphs, tokens, vdim)
            del bb
            torch.cuda.empty_cache()
        return
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
