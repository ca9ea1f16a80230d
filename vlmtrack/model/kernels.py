"""Fused kernels for the frozen LLM on CUDA (liger-kernel): RMSNorm, SwiGLU and RoPE patched into the
model, and a fused linear cross-entropy that never materialises the [tokens, vocab] logits. On CPU, or
where liger-kernel is not installed, the plain PyTorch path runs (the one the tests cover)."""
from __future__ import annotations

import torch

KERNEL_CHOICES = ("auto", "liger", "torch")


def use_fused_kernels(llm, device: torch.device, setting: str, log=print):
    """Patches `llm` in place and returns the fused loss (lm_head weight, hidden, targets) -> per-token
    losses, or None for plain PyTorch. `auto` = liger on CUDA when installed."""
    if setting not in KERNEL_CHOICES:
        raise ValueError(f"train.kernels={setting!r}: use one of {', '.join(KERNEL_CHOICES)}")
    if setting == "torch" or (setting == "auto" and device.type != "cuda"):
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
