"""The embedded demo's tiny model bundle: a Qwen3-architecture LM with its own small tokenizer, and a
random-init SigLIP-architecture vision tower, both saved with `save_pretrained` so that vlmtrack loads
them exactly as it loads Qwen3 and SigLIP.

`build_bundle(out_dir)` writes
  out_dir/llm/         tokenizer (tokenizer.py: byte-level BPE with Qwen2/Qwen3's pre-tokenizer, Qwen3's
                       added tokens and chat template) + Qwen3ForCausalLM, briefly pretrained on CPU
                       (lm_pretrain.py)
  out_dir/vision/      SiglipVisionModel (random init: random features keep colour, shape and position) +
                       SiglipImageProcessor (model/random_init.py)
  out_dir/bundle.json  the settings, the pretraining losses and the build time

Why the LM is pretrained this way (design/DEMO.md): an LM trained on captions alone never reads what comes
before the caption, so a frozen copy ignores the visual tokens. This one sees sequences in exactly the
product's format (chat template, the `<image>` placeholder expanded to `num_latents` positions, caption +
`<|im_end|>` supervised). In most of them (`p_slot_words`) the slot is filled with the caption's attribute
words (background, colours, shapes, sizes, positions) drawn at random: the LM learns to copy from the slot,
and a connector then only has to write word-like embeddings into it. Some (`p_text_only`) have no slot at
all (the LM of the captions alone); the rest have an empty slot (`<|image_pad|>` only), answered as a
blank picture is captioned in the demo data (`synth.BLANK_CAPTION`).

Why the empty slot: vision ablations. A connector fed all-zero features sees a picture whose patches are all
alike, which to a tiny LM that copies well reads as some plain, confidently wrong picture, no worse than a
shuffled one: zero < shuffled, by a seed's chance either way. The demo data holds blank pictures of any
colour, captioned as having nothing in them, so the connector learns that patches all alike mean "nothing
here" and writes what the LM answers as blank; zero features are such a picture, and the LM's blank answer
is far from any caption (correct < shuffled < zero, on every seed tried).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from vlmtrack.demo.lm_pretrain import build_lm
from vlmtrack.demo.settings import BundleSettings
from vlmtrack.demo.tokenizer import build_tokenizer
from vlmtrack.model.random_init import save_random_siglip


def build_bundle(
    out_dir: Path, *, num_latents: int = 64, image_size: int = 64, seed: int = 0, settings: BundleSettings | None = None
) -> None:
    """Writes out_dir/llm (tokenizer + Qwen3ForCausalLM, save_pretrained) and out_dir/vision
    (SiglipVisionModel + SiglipImageProcessor, save_pretrained)."""
    out_dir = Path(out_dir)
    settings = settings or BundleSettings()
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        with torch.random.fork_rng(devices=[]):  # seeds the build without touching the caller's RNG
            _build(out_dir, num_latents, image_size, seed, settings)
    finally:
        torch.set_num_threads(threads)


def _build(out_dir: Path, num_latents: int, image_size: int, seed: int, settings: BundleSettings) -> None:
    t0 = time.perf_counter()
    tokenizer = build_tokenizer(seed, settings)
    t1 = time.perf_counter()
    print(f"demo bundle: tokenizer of {len(tokenizer)} tokens in {t1 - t0:.1f}s")
    lm, stats = build_lm(tokenizer, num_latents, seed, settings)
    t2 = time.perf_counter()
    print(
        f"demo bundle: LM pretrained in {t2 - t1:.1f}s ({settings.steps} steps); held-out caption loss "
        f"{stats['heldout_caption_loss_slot_words']:.3f} with attribute words in the slot, "
        f"{stats['heldout_caption_loss_text_only']:.3f} text only, {stats['heldout_caption_loss_empty_slot']:.3f} "
        "with an empty slot"
    )
    tokenizer.save_pretrained(out_dir / "llm")
    lm.save_pretrained(out_dir / "llm")
    s = settings
    save_random_siglip(out_dir / "vision", image_size, seed=seed, patch_size=s.patch_size,
                       hidden_size=s.vision_hidden_size, intermediate_size=s.vision_intermediate_size,
                       num_hidden_layers=s.vision_layers, num_attention_heads=s.vision_heads)
    total = time.perf_counter() - t0
    meta = {"num_latents": num_latents, "image_size": image_size, "seed": seed, "settings": asdict(settings)}
    meta.update(lm_pretraining=stats, build_seconds=round(total, 1))
    (out_dir / "bundle.json").write_text(json.dumps(meta, indent=1))
    print(f"demo bundle: written to {out_dir} in {total:.1f}s")
