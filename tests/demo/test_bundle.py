"""The demo bundle: a Qwen3-like tokenizer and LM, a SigLIP-like tower, loadable with the Auto classes."""
from __future__ import annotations

import copy
import json
import math
import random

import pytest
import torch

from vlmtrack.data import prompt
from vlmtrack.demo import synth
from vlmtrack.demo.lm_pretrain import caption_loss
from vlmtrack.demo.lm_pretrain_data import SLOT_FILLER, PretrainEncoder
from vlmtrack.demo.tokenizer import CHAT_TEMPLATE_PATH, build_tokenizer

QWEN3_ADDED = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>",
    "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>",
    "</tool_response>", "<think>", "</think>",
]  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(seed=0)


def _check_tokenizer(tok):
    vocab = tok.get_vocab()
    ids = [vocab[t] for t in QWEN3_ADDED]
    assert ids == list(range(ids[0], ids[0] + len(QWEN3_ADDED))), "Qwen3's added tokens, in Qwen3's order"
    assert ids[-1] == len(tok) - 1, "after the BPE vocabulary, as in Qwen3"
    assert 300 <= len(tok) <= 1100
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert prompt.IMAGE_TOKEN not in vocab, "vlmtrack adds <image> at load time"
    assert tok.chat_template == CHAT_TEMPLATE_PATH.read_text(encoding="utf-8")
    for t in QWEN3_ADDED:  # each is one token, never split
        assert tok(f"a{t}b", add_special_tokens=False)["input_ids"][1:-1] == [vocab[t]]


def test_tokenizer_is_qwen3_like(tokenizer):
    _check_tokenizer(tokenizer)
    text = "a small red circle at the top left, two shapes: 12!"
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text


def test_prompt_renders_like_qwen3(tokenizer):
    tok = copy.deepcopy(tokenizer)
    image_id = prompt.add_image_token(tok)
    text = prompt.prompt_text(tok, "<image>\nDescribe the image concisely.")
    assert text == (
        "<|im_start|>user\n<image>\nDescribe the image concisely.<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids.count(image_id) == 1 and ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
    assert tok.convert_tokens_to_ids("<think>") in ids and tok.convert_tokens_to_ids("</think>") in ids


def test_tokenizer_is_deterministic(tokenizer):
    assert build_tokenizer(seed=0).get_vocab() == tokenizer.get_vocab()


def test_attribute_words_are_single_tokens(tokenizer):
    words = {w for _, scene in synth.sample_records(300, 5) for w in synth.attribute_words(scene)}
    assert {w: tokenizer.tokenize(" " + w) for w in words if len(tokenizer.tokenize(" " + w)) != 1} == {}


def test_caption_lengths_fill_every_bucket(tokenizer):
    lengths = [prompt.label_len(tokenizer, r["conversations"][1]["value"]) for r, _ in synth.sample_records(600, 5)]
    shares = [sum(f(n) for n in lengths) / len(lengths) for f in (lambda n: n <= 10, lambda n: 11 <= n <= 20, lambda n: n >= 21)]
    assert all(share >= 0.08 for share in shares), shares  # about 0.34 / 0.51 / 0.15


def test_pretraining_sequences_match_the_product_format(tokenizer):
    """With an empty slot and the caption as the answer, a pretraining sequence is `encode_sample`'s with
    the slot as fillers; with words, the slot holds the scene's attribute words and nothing else."""
    enc = PretrainEncoder(tokenizer, num_latents=16)
    tok = copy.deepcopy(tokenizer)
    image_id = prompt.add_image_token(tok)
    rng = random.Random(0)
    pairs = synth.sample_records(40, 3)
    assert any(not scene.shapes for _, scene in pairs) and any(scene.shapes for _, scene in pairs)
    for record, scene in pairs:
        human, gpt = (turn["value"] for turn in record["conversations"])
        ref = prompt.encode_sample(tok, human, gpt, image_id, num_latents=16, max_seq_len=512)
        plain = enc.encode(record, scene, slot="empty", rng=rng, answer=gpt)
        assert plain.input_ids == [enc.filler_id if i == image_id else i for i in ref.input_ids]
        assert plain.labels == ref.labels and set(plain.slot_labels) == {prompt.IGNORE_INDEX}
        words = enc.encode(record, scene, slot="words", rng=rng)
        slot = [i for i, r in zip(words.input_ids, ref.input_ids) if r == image_id]
        if scene.shapes:
            allowed = {t for w in synth.attribute_words(scene) for t in enc.word_ids(w)}
            assert len(slot) == 16 and set(slot) <= allowed
        else:  # a blank picture has no words to give: its slot stays empty
            assert slot == [enc.filler_id] * 16
        assert words.labels == ref.labels
        text = enc.encode(record, scene, slot="text", rng=rng)
        assert image_id not in text.input_ids and enc.filler_id not in text.input_ids
        assert [t for t in text.labels if t != prompt.IGNORE_INDEX] == [t for t in ref.labels if t != prompt.IGNORE_INDEX]


def test_an_empty_slot_is_answered_as_a_blank_picture(tokenizer):
    enc = PretrainEncoder(tokenizer, num_latents=16)
    record, scene = next((r, s) for r, s in synth.sample_records(40, 3) if s.shapes)
    empty = enc.encode(record, scene, slot="empty", rng=random.Random(0))
    answer = [t for t in empty.labels if t != prompt.IGNORE_INDEX]
    assert tokenizer.decode(answer[:-1]) == synth.BLANK_CAPTION and answer[-1] == enc.end_id


def test_blank_pictures_are_one_colour_and_say_nothing():
    pairs = synth.sample_records(400, 5)
    blank = [(r, s) for r, s in pairs if not s.shapes]
    assert 0.04 < len(blank) / len(pairs) < 0.13  # P_BLANK = 0.08
    assert len({s.fill for _, s in blank}) == len(blank), "any colour, not the four backgrounds"
    for record, scene in blank[:5]:
        assert record["conversations"][1]["value"] == synth.BLANK_CAPTION and synth.attribute_words(scene) == []
        assert len(synth.render(scene, 16).getcolors()) == 1
    assert all(synth.BLANK_CAPTION != r["conversations"][1]["value"] for r, s in pairs if s.shapes)


# ------------------------------------------------------------- the built bundle (one build, about a minute)


@pytest.fixture(scope="module")
def built(demo_assets):
    """The bundle of the embedded demo, as the README's demo build makes it (built once per session)."""
    return demo_assets.llm.parent


@pytest.mark.slow
def test_bundle_loads_with_auto_classes(built, tokenizer):
    from transformers import AutoImageProcessor, AutoModel, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(built / "llm")
    _check_tokenizer(tok)
    assert tok.get_vocab() == tokenizer.get_vocab(), "same seed, same vocabulary"
    lm = AutoModelForCausalLM.from_pretrained(built / "llm")
    assert type(lm).__name__ == "Qwen3ForCausalLM"
    assert lm.config.vocab_size == len(tok) and lm.config.tie_word_embeddings
    assert lm.config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    tower = AutoModel.from_pretrained(built / "vision")
    assert type(tower).__name__ == "SiglipVisionModel"
    processor = AutoImageProcessor.from_pretrained(built / "vision")

    record, scene = synth.sample_records(1, 8)[0]
    pixels = processor(synth.render(scene, 64), return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 64, 64)
    with torch.no_grad():
        feats = tower(pixel_values=pixels).last_hidden_state
    assert feats.shape == (1, (64 // tower.config.patch_size) ** 2, tower.config.hidden_size)
    assert torch.isfinite(feats).all()

    image_id = prompt.add_image_token(tok)
    human, gpt = (turn["value"] for turn in record["conversations"])
    sample = prompt.encode_sample(tok, human, gpt, image_id, num_latents=64, max_seq_len=512)
    ids = torch.tensor([sample.input_ids])
    filler = tok.convert_tokens_to_ids(SLOT_FILLER)
    embeds = lm.get_input_embeddings()(torch.where(ids == image_id, filler, ids))
    with torch.no_grad():
        out = lm(inputs_embeds=embeds, labels=torch.tensor([sample.labels]))
    assert out.logits.shape == (1, ids.shape[1], lm.config.vocab_size)
    assert math.isfinite(out.loss.item())


@pytest.mark.slow
def test_lm_reads_the_slot(built):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    meta = json.loads((built / "bundle.json").read_text())
    stats = meta["lm_pretraining"]
    assert all(math.isfinite(v) for v in stats.values())
    assert stats["train_caption_loss_last50"] < stats["train_caption_loss_first"] / 5

    tok = AutoTokenizer.from_pretrained(built / "llm")
    lm = AutoModelForCausalLM.from_pretrained(built / "llm").eval()
    enc = PretrainEncoder(tok, num_latents=64)
    pairs = [(r, s) for r, s in synth.sample_records(80, 77) if s.shapes]
    losses = {}
    for slot in ("words", "text", "empty"):  # each scores the record's own caption
        rng = random.Random(0)
        examples = [enc.encode(r, s, slot=slot, rng=rng, answer=r["conversations"][1]["value"]) for r, s in pairs]
        losses[slot] = caption_loss(lm, examples, tok.pad_token_id)
    assert losses["text"] < 1.5, "a real (tiny) LM of the captions"
    assert losses["words"] < losses["text"] - 0.15, losses
    assert losses["empty"] > losses["text"] + 1.0, "after an empty slot a caption is far from the LM's answer"
    blank = [enc.encode(r, s, slot="empty", rng=random.Random(0)) for r, s in pairs]
    assert caption_loss(lm, blank, tok.pad_token_id) < 0.1, "an empty slot is answered as a blank picture"
