"""How many trials to train side by side: K connectors and optimizer states plus K x the LLM
activations must fit on the GPU. On CPU, where it does not pay, trials run one at a time."""
from __future__ import annotations

import torch
from transformers import AutoConfig

from vlmtrack.config import Config

HEADROOM = 0.6  # use at most this share of the free device memory


def activation_bytes_per_trial(cfg: Config) -> int:
    """A rough upper estimate of one trial's training memory on top of the shared frozen weights:
    the LLM's kept activations for batch x sequence (backward flows through the frozen LLM into the
    visual tokens), fp32 logits at label positions, and the connector with AdamW state."""
    llm = AutoConfig.from_pretrained(cfg.model.llm)
    llm = getattr(llm, "text_config", llm)
    h, ffn, layers, vocab = llm.hidden_size, llm.intermediate_size, llm.num_hidden_layers, llm.vocab_size
    seq = cfg.model.num_latents + 48  # LLaVA-Pretrain: ~22 prompt + ~13 caption tokens, padded
    per_token_layer = (10 * h + 3 * ffn) * 2  # bf16
    activations = cfg.train.batch_size * seq * layers * per_token_layer
    logits = cfg.train.batch_size * 24 * vocab * 4 * 2
    width = h
    connector_params = cfg.model.resampler_depth * (4 * width * width + 2 * cfg.model.resampler_ffn_mult * width * width)
    return activations + logits + connector_params * 16


def choose_group_size(cfg: Config, n_points: int, log=print) -> int:
    if not cfg.sweep.side_by_side:
        log("[sweep] one trial at a time (sweep.side_by_side=false)")
        return 1
    if cfg.sweep.group_size > 0:
        k = min(cfg.sweep.group_size, n_points)
        log(f"[sweep] {k} trials side by side (sweep.group_size)")
        return k
    if not torch.cuda.is_available() or cfg.train.device == "cpu":
        # Measured (benchmarks/demo_sweep_wall.py, 2 cores): the demo sweep took 420 s side by side and
        # 334 s one by one. A CPU is compute-bound at any batch, so stacking saves only the small vision
        # pass and costs cache locality; on a GPU the same stacking removed 70% of the time.
        log("[sweep] one trial at a time on CPU (side by side does not pay there; sweep.group_size=K forces K)")
        return 1
    free, total = torch.cuda.mem_get_info()
    per_trial = activation_bytes_per_trial(cfg)
    k = max(1, min(n_points, int(free * HEADROOM // per_trial)))
    log(f"[sweep] {k} trials side by side: ~{per_trial / 2**30:.2f} GiB per trial estimated, "
        f"{free / 2**30:.1f} of {total / 2**30:.1f} GiB free, {HEADROOM:.0%} used")
    return k
