"""Fused kernels for the frozen LLM on CUDA (liger-kernel): RMSNorm, SwiGLU and RoPE patched into the
model, and a fused linear cross-entropy that never materialises the [tokens, vocab] logits. On CPU, or
where liger-kernel is not installed, the plain PyTorch path runs (the one the tests cover)."""
from __future__ import annotations

import torch

KERNEL_CHOICES = ("auto", "liger", "torch")
# Measured on an H100 (docs/PERFORMANCE.md): liger's Triton kernels cost more to launch than PyTorch's,
# so at a few sequences per step (launch-bound) they are slower: batch 4, 0.179 s vs 0.138 s per step;
# 6 x 4 stacked, 0.216 vs 0.183; at 256, 0.232 vs 0.421. `auto` uses them from this many sequences on.
FUSED_MIN_SEQUENCES = 64


def use_fused_kernels(llm, device: torch.device, setting: str, log=print,
                      sequences_per_step: int = FUSED_MIN_SEQUENCES, graphed: bool = False):
    """Patches `llm` in place and returns the fused loss (lm_head weight, hidden, targets) -> per-token
    losses, or None for plain PyTorch. `auto` = liger on CUDA when installed and the LLM sees at least
    FUSED_MIN_SEQUENCES sequences per forward, or at any size when the step is a replayed CUDA graph: launches
    then cost nothing, and the unfused norms, activations and rotations were most of the graph's GPU time
    (6 x 4 sequences: 59 ms a step, two thirds of it elementwise kernels; docs/PERFORMANCE.md)."""
    if setting not in KERNEL_CHOICES:
        raise ValueError(f"train.kernels={setting!r}: use one of {', '.join(KERNEL_CHOICES)}")
    launch_bound = sequences_per_step < FUSED_MIN_SEQUENCES and not graphed
    if setting == "torch" or (setting == "auto" and (device.type != "cuda" or launch_bound)):
        return None
    if device.type != "cuda":
        raise ValueError("train.kernels=liger needs a CUDA device: use train.kernels=auto or torch on CPU")
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
        from liger_kernel.transformers.monkey_patch import _apply_liger_kernel_to_instance
    except ImportError:
        if setting == "liger":
            raise ValueError("train.kernels=liger but liger-kernel is not installed: pip install "
                             "'vlmtrack[cuda]', or set train.kernels=torch") from None
        log("[kernels] liger-kernel not installed: plain PyTorch kernels (pip install 'vlmtrack[cuda]')")
        return None
    # the loss is ours (at label positions only), so liger's own model-forward loss is left off
    _apply_liger_kernel_to_instance(model=llm, rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                    fused_linear_cross_entropy=False)
    log(f"[kernels] liger-kernel: fused RMSNorm, SwiGLU, RoPE and linear cross-entropy on {llm.config.model_type}")
    return LigerFusedLinearCrossEntropyLoss(reduction="none")
