"""Qwen3 LMs and SigLIP vision towers of random weights, saved with `save_pretrained` so that vlmtrack loads
them exactly as it loads the real checkpoints. They serve the tests' tiny models, the bench presets (the
real shapes: compute depends on shapes, not weights) and the demo bundle (its LM starts here before its
pretraining; its tower stays random, since random features keep colour, shape and position).

`seed=None` continues the caller's random stream: a model drawn right after another, from one seed, keeps
the weights it had when both were drawn in a row.
"""
from __future__ import annotations

from pathlib import Path

import torch


def random_qwen3(tokenizer, *, seed: int | None = None, dtype: torch.dtype = torch.float32, device="cpu",
                 **config):
    """A Qwen3ForCausalLM of random weights that ends a caption with the tokenizer's `<|im_end|>` and pads
    with its pad token; its vocabulary is the tokenizer's unless `vocab_size` says otherwise."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(**{"vocab_size": len(tokenizer), **config}, bos_token_id=None,
                         eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                         pad_token_id=tokenizer.pad_token_id)
    if seed is not None:
        torch.manual_seed(seed)
    with torch.device(device):
        return Qwen3ForCausalLM(config).to(dtype)


def random_siglip(image_size: int, *, seed: int | None = None, dtype: torch.dtype = torch.float32, device="cpu",
                  **config):
    """A SiglipVisionModel of random weights for square pictures of `image_size` pixels."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    if seed is not None:
        torch.manual_seed(seed)
    with torch.device(device):
        return SiglipVisionModel(SiglipVisionConfig(image_size=image_size, **config)).to(dtype)


def save_random_qwen3(out_dir: Path, tokenizer, **kwargs):
    """`random_qwen3(tokenizer, **kwargs)` and the tokenizer, saved together in out_dir; returns the model."""
    model = random_qwen3(tokenizer, **kwargs)
    tokenizer.save_pretrained(out_dir)
    model.save_pretrained(out_dir)
    return model


def save_random_siglip(out_dir: Path, image_size: int, **kwargs):
    """`random_siglip(image_size, **kwargs)` and SigLIP's image processor (resize to `image_size`, scale to
    [-1, 1]), saved together in out_dir; returns the model."""
    from transformers import SiglipImageProcessor

    model = random_siglip(image_size, **kwargs)
    model.save_pretrained(out_dir)
    SiglipImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(out_dir)
    return model
