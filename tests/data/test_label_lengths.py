"""Caption lengths counted in one batch and kept beside the split: equal to prompt.label_len, read back only
for the same data file and tokenizer."""
import json
import os

import pytest

from tests.helpers.tiny_tokenizer import tiny_tokenizer
from vlmtrack.data import label_lengths as L
from vlmtrack.data.llava import read_samples
from vlmtrack.data.prompt import add_image_token, label_len
from vlmtrack.demo.tokenizer import build_tokenizer

CAPTIONS = ["a red circle on gray", "  spaced  out\ttext\n", "naïve café 東京 🚀", "<|im_end|> inside", "<image> too",
            "an image of two shapes on a gray background: a small red circle at the left and a large blue square"]


def write_data(path, captions):
    conv = lambda c: [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": c}]  # noqa: E731
    path.write_text(json.dumps([{"id": str(i), "image": f"{i}.jpg", "conversations": conv(c)}
                                for i, c in enumerate(captions)]))
    return path


@pytest.fixture(scope="module")
def demo_tok():
    tok = build_tokenizer(0)
    add_image_token(tok)
    return tok


def test_batched_count_equals_label_len(demo_tok):
    tiny = tiny_tokenizer()
    for tok in (demo_tok, tiny):
        assert L.count_tokens(tok, CAPTIONS) == [label_len(tok, c) for c in CAPTIONS]


def test_truncating_backend_falls_back_to_the_tokenizers_call(demo_tok):
    """A backend left with truncation on would count short: the ordinary call switches it off first."""
    demo_tok.backend_tokenizer.enable_truncation(2)
    try:
        assert L.plain_backend(demo_tok) is None
        assert L.count_tokens(demo_tok, CAPTIONS) == [label_len(demo_tok, c) for c in CAPTIONS]
    finally:
        demo_tok.backend_tokenizer.no_truncation()


def test_lengths_are_kept_and_read_back(tmp_path, demo_tok, monkeypatch):
    data = write_data(tmp_path / "d.json", CAPTIONS)
    samples = read_samples(data)
    first = L.caption_lengths(samples, demo_tok, data, tmp_path / "splits")
    assert first == [label_len(demo_tok, c) for c in CAPTIONS]
    monkeypatch.setattr(L, "count_tokens", lambda *a: pytest.fail("counted again"))
    assert L.caption_lengths(samples, demo_tok, data, tmp_path / "splits") == first


def count_calls(monkeypatch) -> list:
    calls, real = [], L.count_tokens
    monkeypatch.setattr(L, "count_tokens", lambda tok, texts: calls.append(1) or real(tok, texts))
    return calls


def test_a_changed_data_file_is_counted_again(tmp_path, demo_tok, monkeypatch):
    data = write_data(tmp_path / "d.json", CAPTIONS)
    L.caption_lengths(read_samples(data), demo_tok, data, tmp_path)
    changed = CAPTIONS[:-1] + ["a much longer last caption than the one before it was"]
    write_data(data, changed)
    st = data.stat()
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # a later write, even on a coarse clock
    calls = count_calls(monkeypatch)
    assert L.caption_lengths(read_samples(data), demo_tok, data, tmp_path) == [label_len(demo_tok, c) for c in changed]
    assert calls == [1]


def test_another_tokenizer_is_counted_again(tmp_path, demo_tok, monkeypatch):
    data = write_data(tmp_path / "d.json", CAPTIONS)
    samples = read_samples(data)
    L.caption_lengths(samples, demo_tok, data, tmp_path)
    tiny = tiny_tokenizer()
    calls = count_calls(monkeypatch)
    assert L.caption_lengths(samples, tiny, data, tmp_path) == [label_len(tiny, c) for c in CAPTIONS]
    assert calls == [1]
    other = build_tokenizer(0)  # the same vocabulary, one added token more
    other.add_tokens(["zzzq"])
    assert L.tokenizer_fingerprint(other) != L.tokenizer_fingerprint(build_tokenizer(0))


def test_a_damaged_file_is_counted_again(tmp_path, demo_tok):
    data = write_data(tmp_path / "d.json", CAPTIONS)
    for damaged in ("{not json", "[1, 2]", '{"key": 3}'):
        L.lengths_path(tmp_path).write_text(damaged)
        got = L.caption_lengths(read_samples(data), demo_tok, data, tmp_path)
        assert got == [label_len(demo_tok, c) for c in CAPTIONS]
    assert json.loads(L.lengths_path(tmp_path).read_text())["lengths"]


def test_prepare_data_reads_back_the_same_lengths_split_and_golden_set(tiny_paths, tmp_path):
    """A second start reads the lengths from the split folder and builds the very same run data."""
    from tests.helpers.tiny_models import tiny_config
    from vlmtrack.data.llava import get_metadata
    from vlmtrack.data.pipeline import prepare_data
    from vlmtrack.model.backbone import load_tokenizer

    cfg = tiny_config(tiny_paths, tmp_path / "out")
    tok = load_tokenizer(cfg.model.llm)
    first = prepare_data(cfg, tok, tmp_path / "out")
    assert first.metas == get_metadata(first.samples, tok, cfg.data.len_buckets, cfg.data.bucket_names)
    assert L.lengths_path(first.split.path.parent).exists()
    second = prepare_data(cfg, tok, tmp_path / "out")
    assert second.metas == first.metas and second.golden == first.golden
    assert (second.split.train, second.split.eval, second.split.eval_hash) == (
        first.split.train, first.split.eval, first.split.eval_hash)

