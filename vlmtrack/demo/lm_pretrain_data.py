"""The demo LM's pretraining sequences, in exactly the product's format (chat template, the `<image>`
placeholder expanded to `num_latents` positions, caption + `<|im_end|>` supervised), with the slot holding
the scene's attribute words, `<|image_pad|>` fillers (an empty slot) or nothing at all (text only)."""
from __future__ import annotations

import copy
import random
from dataclasses import dataclass

import torch

from vlmtrack.data import prompt
from vlmtrack.demo import synth

SLOT_FILLER = "<|image_pad|>"


@dataclass
class PretrainExample:
    input_ids: list[int]
    labels: list[int]  # as `prompt.encode_sample`: caption tokens + <|im_end|>, IGNORE_INDEX elsewhere
    slot_labels: list[int]  # the slot's words (next-token targets inside the slot), IGNORE_INDEX elsewhere


class PretrainEncoder:
    """Encodes (record, scene) pairs as `prompt.encode_sample` does (chat template, `<image>` expanded to
    `num_latents` positions, labels on caption + `<|im_end|>`), with the slot holding either
    `<|image_pad|>` fillers or the scene's attribute words."""

    def __init__(self, tokenizer, num_latents: int):
        self.tokenizer = tokenizer
        self.num_latents = num_latents
        self._with_image = copy.deepcopy(tokenizer)
        self._image_id = prompt.add_image_token(self._with_image)
        self.filler_id = tokenizer.convert_tokens_to_ids(SLOT_FILLER)
        self.end_id = prompt.end_of_turn_id(tokenizer)
        self._prompts: dict[str, tuple[list[int], int]] = {}
        self._text_prompts: dict[str, list[int]] = {}
        self._words: dict[str, list[int]] = {}

    def prompt_ids(self, human_text: str) -> tuple[list[int], int]:
        """Prompt ids with the slot expanded (fillers in it), and the slot's first position."""
        if human_text not in self._prompts:
            text = prompt.prompt_text(self._with_image, human_text)
            ids = self._with_image(text, add_special_tokens=False)["input_ids"]
            at = ids.index(self._image_id)
            self._prompts[human_text] = (ids[:at] + [self.filler_id] * self.num_latents + ids[at + 1 :], at)
        return self._prompts[human_text]

    def text_prompt_ids(self, human_text: str) -> list[int]:
        """Prompt ids of the instruction alone: the `<image>` placeholder and its line break removed."""
        if human_text not in self._text_prompts:
            text = prompt.prompt_text(self.tokenizer, human_text.replace(prompt.IMAGE_TOKEN, "").strip("\n"))
            self._text_prompts[human_text] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self._text_prompts[human_text]

    def word_ids(self, word: str) -> list[int]:
        if word not in self._words:  # spelt as inside a caption: after a space
            self._words[word] = self.tokenizer(" " + word, add_special_tokens=False)["input_ids"]
        return self._words[word]

    def slot(self, words: list[str], rng: random.Random) -> list[int]:
        """`num_latents` ids: the words drawn at random (with replacement) until the slot is full."""
        out: list[int] = []
        while len(out) < self.num_latents:
            out += self.word_ids(rng.choice(words))
        return out[: self.num_latents]

    def encode(self, record: dict, scene: synth.Scene, slot: str, rng: random.Random,
               answer: str | None = None) -> PretrainExample:
        """`slot`: "words" (the scene's attribute words), "empty" (fillers) or "text" (no slot at all). The
        answer is the record's caption, after an empty slot the blank-picture caption; `answer` replaces
        either (held-out scoring)."""
        human, gpt = (turn["value"] for turn in record["conversations"])
        if slot == "words" and not scene.shapes:  # a blank picture: nothing to put in the slot
            slot = "empty"
        if slot == "text":
            prompt_ids = list(self.text_prompt_ids(human))
        else:
            prompt_ids, at = self.prompt_ids(human)
            prompt_ids = list(prompt_ids)
        slot_labels = [prompt.IGNORE_INDEX] * len(prompt_ids)
        if slot == "words":
            prompt_ids[at : at + self.num_latents] = self.slot(synth.attribute_words(scene), rng)
            slot_labels[at + 1 : at + self.num_latents] = prompt_ids[at + 1 : at + self.num_latents]
        if answer is None:
            answer = synth.BLANK_CAPTION if slot == "empty" else gpt
        target = self.tokenizer(answer, add_special_tokens=False)["input_ids"] + [self.end_id]
        ignore = [prompt.IGNORE_INDEX] * len(target)
        return PretrainExample(prompt_ids + target, [prompt.IGNORE_INDEX] * len(prompt_ids) + target, slot_labels + ignore)


def collate(examples: list[PretrainExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch; with causal attention the padding never affects the real tokens."""
    width = max(len(e.input_ids) for e in examples)
    out = {"input_ids": torch.full((len(examples), width), pad_id, dtype=torch.long)}
    for key in ("labels", "slot_labels"):
        out[key] = torch.full((len(examples), width), prompt.IGNORE_INDEX, dtype=torch.long)
    for i, e in enumerate(examples):
        out["input_ids"][i, : len(e.input_ids)] = torch.tensor(e.input_ids)
        out["labels"][i, : len(e.labels)] = torch.tensor(e.labels)
        out["slot_labels"][i, : len(e.slot_labels)] = torch.tensor(e.slot_labels)
    return out
