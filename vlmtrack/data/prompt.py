"""Prompt building and label masking with whatever tokenizer is loaded (demo bundle or a real Qwen3).

Spec 3.2 Option A: the training wrapper is the tokenizer's chat template; at inference the same
wrapper stops before the assistant target. Only the assistant text and its end-of-turn token are
supervised; everything else (prompt, visual positions) is -100.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from tokenizers import AddedToken

IMAGE_TOKEN = "<image>"
IGNORE_INDEX = -100
# Idefics2's own names (transformers' Idefics2Processor adds them to the tokenizer it wraps): the token on
# each side of an image's run of <image> tokens, and the end-of-turn marker of Idefics2's own chat format.
# model.connector=idefics2 adds both, so vlmtrack's vocabulary is the exported processor's, id for id.
BOUNDARY_TOKEN = "<fake_token_around_image>"
END_OF_UTTERANCE_TOKEN = "<end_of_utterance>"
# Idefics2Processor's rule after it expands an image: a closing boundary token followed directly by a word
# gets a space, so the word tokenizes as it would after whitespace
_CLOSING_BOUNDARY = re.compile(rf"{re.escape(BOUNDARY_TOKEN)}(?=[^\s<])")

# The captioning model's instruction (one for every image): LLaVA-Pretrain's first brief-description
# instruction, in its image-first form, as the connector saw it in training
CAPTION_INSTRUCTION = f"{IMAGE_TOKEN}\nDescribe the image concisely."


def add_image_token(tokenizer) -> int:
    """Adds the `<image>` placeholder as a special token (never part of a saved bundle); returns its id."""
    if _token_id(tokenizer, IMAGE_TOKEN) is None:
        # add_tokens keeps the tokenizer's own special-token list intact (add_special_tokens would replace it)
        tokenizer.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
    return tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)


def add_idefics2_tokens(tokenizer) -> int:
    """`<image>`, then Idefics2's boundary and end-of-utterance tokens; returns the boundary token's id."""
    add_image_token(tokenizer)
    missing = [t for t in (BOUNDARY_TOKEN, END_OF_UTTERANCE_TOKEN) if _token_id(tokenizer, t) is None]
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in missing], special_tokens=True)
    return tokenizer.convert_tokens_to_ids(BOUNDARY_TOKEN)


def idefics2_image_text(text: str, num_latents: int) -> str:
    """The text Idefics2Processor tokenizes (do_image_splitting off): each `<image>` becomes
    `<fake_token_around_image>` + num_latents `<image>` + `<fake_token_around_image>`."""
    run = f"{BOUNDARY_TOKEN}{IMAGE_TOKEN * num_latents}{BOUNDARY_TOKEN}"
    text = text.replace(IMAGE_TOKEN, run).replace(BOUNDARY_TOKEN * 2, BOUNDARY_TOKEN)
    return _CLOSING_BOUNDARY.sub(f"{BOUNDARY_TOKEN} ", text)


def _token_id(tokenizer, token: str) -> int | None:
    # convert_tokens_to_ids is a lookup; get_vocab() would build a 150k-entry dict on every call
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or (tid == tokenizer.unk_token_id and token != tokenizer.unk_token):
        return None
    return tid


def end_of_turn_id(tokenizer) -> int:
    """`<|im_end|>` for ChatML tokenizers such as Qwen3's; the eos token otherwise."""
    tid = _token_id(tokenizer, "<|im_end|>")
    if tid is not None:
        return tid
    if tokenizer.eos_token_id is None:
        raise ValueError("tokenizer has neither <|im_end|> nor an eos token: cannot mark the end of the caption")
    return tokenizer.eos_token_id


def prompt_text(tokenizer, human_text: str) -> str:
    """The chat-templated user turn plus the assistant header (Qwen3: with an empty think block)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "tokenizer has no chat_template: use an instruct/chat tokenizer (e.g. Qwen/Qwen3-0.6B) "
            "or set tokenizer.chat_template before training"
        )
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": human_text}],
        tokenize=False,
        add_generation_prompt=True,
        enable_thinking=False,
    )


def label_len(tokenizer, caption: str) -> int:
    """Spec 1.1: token count of the assistant text alone (no template, no end-of-turn)."""
    return len(tokenizer(caption, add_special_tokens=False)["input_ids"])


def expanded_prompt_ids(tokenizer, human_text: str, image_token_id: int, num_latents: int,
                        boundary_token_id: int | None = None) -> list[int]:
    """The inference prompt (spec 3.2 Option A) with the placeholder expanded to the visual positions. With a
    boundary token (model.connector=idefics2) the expansion is Idefics2Processor's, made on the text as it
    makes it, so the exported processor gives these ids."""
    text = prompt_text(tokenizer, human_text)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    n_img = ids.count(image_token_id)
    if n_img != 1:
        raise ValueError(f"prompt must hold exactly one {IMAGE_TOKEN} placeholder, found {n_img}")
    if boundary_token_id is not None:
        if boundary_token_id in ids:
            raise ValueError(f"prompt must not hold {BOUNDARY_TOKEN} itself: the image's boundaries are added")
        return tokenizer(idefics2_image_text(text, num_latents), add_special_tokens=False)["input_ids"]
    at = ids.index(image_token_id)
    return ids[:at] + [image_token_id] * num_latents + ids[at + 1 :]


@dataclass
class EncodedSample:
    input_ids: list[int]  # image placeholder already expanded to num_latents positions
    labels: list[int]  # IGNORE_INDEX except at the caption tokens and the end-of-turn token
    label_len: int  # spec 1.1 caption length (before truncation)
    num_supervised: int  # label tokens left after truncation
    truncated: bool


def encode_sample(
    tokenizer,
    human_text: str,
    caption: str,
    image_token_id: int,
    num_latents: int,
    max_seq_len: int,
    boundary_token_id: int | None = None,
) -> EncodedSample:
    prompt_ids = expanded_prompt_ids(tokenizer, human_text, image_token_id, num_latents, boundary_token_id)
    caption_ids = tokenizer(caption, add_special_tokens=False)["input_ids"]
    target = caption_ids + [end_of_turn_id(tokenizer)]
    room = max_seq_len - len(prompt_ids)
    if room <= 0:
        raise ValueError(
            f"prompt alone is {len(prompt_ids)} tokens (with {num_latents} visual tokens), "
            f"not less than max_seq_len={max_seq_len}: raise max_seq_len"
        )
    truncated = len(target) > room
    target = target[:room]
    return EncodedSample(
        input_ids=prompt_ids + target,
        labels=[IGNORE_INDEX] * len(prompt_ids) + target,
        label_len=len(caption_ids),
        num_supervised=len(target),
        truncated=truncated,
    )
