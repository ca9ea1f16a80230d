"""The demo bundle's settings: its tokenizer, its LM and the LM's pretraining, its vision tower. One frozen
record, written whole to bundle.json."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BundleSettings:
    # tokenizer
    vocab_size: int = 640  # BPE vocabulary before Qwen3's 26 added tokens (training may stop short of it)
    tokenizer_samples: int = 4_000
    # LM (Qwen3 architecture)
    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    # LM pretraining
    pretrain_samples: int = 8_000
    steps: int = 400
    batch_size: int = 32
    lr: float = 1e-2
    warmup_steps: int = 30
    weight_decay: float = 0.01
    p_slot_words: float = 0.7  # share of sequences whose slot holds the caption's attribute words
    p_text_only: float = 0.15  # share with no slot at all (the instruction alone): the text-only caption LM
    # the rest: an empty slot (fillers), answered as a blank picture is (synth.BLANK_CAPTION)
    slot_loss: bool = True  # also supervise the words inside the slot
    threads: int = 2
    # vision tower (SigLIP architecture)
    patch_size: int = 8
    vision_hidden_size: int = 128
    vision_intermediate_size: int = 256
    vision_layers: int = 2
    vision_heads: int = 4
