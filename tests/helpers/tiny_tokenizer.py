"""A word-level tokenizer with Qwen3's special tokens and chat template, built in milliseconds, for
unit tests of prompt building and masking that should not wait for the demo bundle."""
from __future__ import annotations

import random

from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from vlmtrack.demo import synth

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
TEMPLATE = (Path(synth.__file__).parent / "qwen3_chat_template.jinja").read_text()


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    rng = random.Random(0)
    texts = synth.BRIEF_INSTRUCTIONS + ["user assistant system"] + [
        synth.caption(synth.sample_scene(rng)) for _ in range(300)
    ]
    split = pre_tokenizers.Whitespace().pre_tokenize_str
    words = {w for text in texts for w, _ in split(text)}
    vocab = {t: i for i, t in enumerate(SPECIALS + ["[UNK]"] + sorted(words))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   unk_token="[UNK]")
    fast.add_special_tokens({"additional_special_tokens": SPECIALS[1:]})
    fast.chat_template = TEMPLATE
    return fast
