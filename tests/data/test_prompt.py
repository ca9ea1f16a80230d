import pytest

from tests.helpers.tiny_tokenizer import tiny_tokenizer
from vlmtrack.data import prompt


@pytest.fixture(scope="module")
def tok():
    t = tiny_tokenizer()
    prompt.add_image_token(t)
    return t


def test_image_token_added_once(tok):
    n = len(tok)
    assert prompt.add_image_token(tok) == tok.convert_tokens_to_ids("<image>")
    assert len(tok) == n


def test_only_caption_and_end_of_turn_are_supervised(tok):
    iid = tok.convert_tokens_to_ids("<image>")
    caption = "a large red circle at the left of a gray background"
    enc = prompt.encode_sample(tok, "Describe the image concisely.\n<image>", caption, iid, 8, 512)
    supervised = [(i, t) for i, t in enumerate(enc.labels) if t != prompt.IGNORE_INDEX]
    caption_ids = tok(caption, add_special_tokens=False)["input_ids"]
    assert [t for _, t in supervised] == caption_ids + [tok.convert_tokens_to_ids("<|im_end|>")]
    # supervised positions are the tail; every image and prompt position is ignored
    assert [i for i, _ in supervised] == list(range(len(enc.labels) - len(caption_ids) - 1, len(enc.labels)))
    img_pos = [i for i, t in enumerate(enc.input_ids) if t == iid]
    assert len(img_pos) == 8 and img_pos == list(range(img_pos[0], img_pos[0] + 8))
    assert all(enc.labels[i] == prompt.IGNORE_INDEX for i in img_pos)
    assert enc.label_len == len(caption_ids) == prompt.label_len(tok, caption)
    assert enc.num_supervised == enc.label_len + 1 and not enc.truncated


def test_training_wrapper_matches_chat_template(tok):
    human, caption = "<image>\nDescribe the image concisely.", "a red circle on gray"
    full = tok.apply_chat_template(
        [{"role": "user", "content": human}, {"role": "assistant", "content": caption}], tokenize=False)
    assert full == prompt.prompt_text(tok, human) + caption + "<|im_end|>\n"


def test_truncation_accounting(tok):
    iid = tok.convert_tokens_to_ids("<image>")
    caption = "a large red circle at the left of a gray background"
    full = prompt.encode_sample(tok, "<image>\nDescribe the image concisely.", caption, iid, 8, 512)
    prompt_len = len(full.input_ids) - full.num_supervised
    cut = prompt.encode_sample(tok, "<image>\nDescribe the image concisely.", caption, iid, 8, prompt_len + 3)
    assert cut.truncated and cut.num_supervised == 3 and len(cut.input_ids) == prompt_len + 3
    assert cut.label_len == full.label_len  # caption length is a property of the caption, not of truncation
    with pytest.raises(ValueError, match="max_seq_len"):
        prompt.encode_sample(tok, "<image>\nDescribe the image concisely.", caption, iid, 8, prompt_len)


def test_prompt_needs_one_placeholder(tok):
    iid = tok.convert_tokens_to_ids("<image>")
    with pytest.raises(ValueError, match="exactly one"):
        prompt.encode_sample(tok, "<image> <image> Describe", "a red circle", iid, 4, 512)


@pytest.mark.parametrize("text", ["<|im_start|>user\n<image>\nDescribe the image.<|im_end|>",
                                  "Describe the image.\n<image>", "a<image>red circle", "<image><image> two"])
def test_idefics2_expansion_is_the_processors(text):
    """model.connector=idefics2 trains on the ids transformers' Idefics2Processor makes of the same text: the
    boundaries, the image run, the space after a closing boundary that a word follows, adjacent images."""
    from transformers import Idefics2Processor
    from transformers.models.idefics2.image_processing_pil_idefics2 import Idefics2ImageProcessorPil

    ours, theirs = tiny_tokenizer(), tiny_tokenizer()
    prompt.add_idefics2_tokens(ours)
    processor = Idefics2Processor(Idefics2ImageProcessorPil(), theirs, image_seq_len=3)
    # as tokens: the processor adds its two tokens in another order, so their ids differ
    expected = theirs.convert_ids_to_tokens(processor(text=text)["input_ids"][0])
    got = ours.convert_ids_to_tokens(ours(prompt.idefics2_image_text(text, 3), add_special_tokens=False)["input_ids"])
    assert got == expected
    assert got.count(prompt.BOUNDARY_TOKEN) == 2 * text.count("<image>") - ("<image><image>" in text)
