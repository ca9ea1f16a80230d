"""The golden dump's generate() calls, each in a fresh process: torch's default SDPA backends against
vlmtrack's (cuDNN attention left out, model/kernels.py::NO_CUDNN_BACKENDS). cuDNN plans every new shape,
and each generated token has a new key length, so a process's first call pays ~64 plans.

    python benchmarks/first_generate.py [--preset small] [--batch 64] [--new-tokens 64]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from contextlib import nullcontext

import torch
import yaml

from vlmtrack.bench.run import PRESETS


def calls(preset: str, batch: int, new_tokens: int, backends: str, n: int = 3) -> list[float]:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from vlmtrack.model.kernels import sdpa_without_cudnn

    cfg = yaml.safe_load(PRESETS.read_text())[preset]["llm"]
    torch.manual_seed(0)
    with torch.device("cuda"):
        llm = Qwen3ForCausalLM(Qwen3Config(**cfg, eos_token_id=5, pad_token_id=0, bos_token_id=None))
    llm = llm.to(torch.bfloat16).eval()
    embeds = torch.randn(batch, 90, cfg["hidden_size"], device="cuda", dtype=torch.bfloat16) * 0.02
    mask = torch.ones(batch, 90, dtype=torch.long, device="cuda")
    mask[: batch // 8, :5] = 0  # a few left-padded prompts, as a golden batch has
    attention = sdpa_without_cudnn if backends == "vlmtrack" else nullcontext
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16), attention():
            llm.generate(inputs_embeds=embeds, attention_mask=mask, do_sample=True, temperature=0.2, top_p=0.9,
                         max_new_tokens=new_tokens, min_new_tokens=new_tokens, eos_token_id=5, pad_token_id=0)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--child", choices=["torch", "vlmtrack"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(calls(a.preset, a.batch, a.new_tokens, a.child)))
        return
    print(f"| SDPA backends ({a.preset}, {a.batch} prompts x {a.new_tokens} new tokens) | 1st call s | 2nd s | 3rd s |")
    print("|---|---|---|---|")
    for backends, name in [("torch", "torch's default (cuDNN first on Hopper)"), ("vlmtrack", "vlmtrack (no cuDNN)")]:
        out = subprocess.run([sys.executable, __file__, "--preset", a.preset, "--batch", str(a.batch),
                              "--new-tokens", str(a.new_tokens), "--child", backends],
                             capture_output=True, text=True, check=True).stdout
        times = json.loads(out.strip().splitlines()[-1])
        print(f"| {name} | " + " | ".join(f"{t:.2f}" for t in times) + " |")


if __name__ == "__main__":
    main()
