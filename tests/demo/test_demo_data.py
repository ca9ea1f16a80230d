"""The embedded demo dataset is in LLaVA-Pretrain's exact format and fills the spec's buckets."""
import json
import re

import pytest
from transformers import AutoTokenizer

from vlmtrack.data.llava import get_metadata, read_samples
from vlmtrack.demo import synth

pytestmark = pytest.mark.slow


def test_demo_dataset_is_llava_pretrain_format(demo_assets):
    records = json.loads(demo_assets.data_path.read_text())
    assert len(records) >= 5000  # the spec's 2,000-sample eval plus training
    for r in records[:200]:
        assert set(r) == {"id", "image", "conversations"}
        assert re.fullmatch(r"\d{5}/\d{9}\.jpg", r["image"]) and (demo_assets.image_folder / r["image"]).is_file()
        human, gpt = r["conversations"]
        assert human["from"] == "human" and gpt["from"] == "gpt"
        instruction = human["value"].replace("<image>", "").strip()
        assert instruction in synth.BRIEF_INSTRUCTIONS and human["value"].count("<image>") == 1
    starts = [r["conversations"][0]["value"].startswith("<image>") for r in records]
    assert 0.4 < sum(starts) / len(starts) < 0.6  # placeholder before and after the instruction


def test_demo_captions_fill_all_three_buckets(demo_assets):
    tok = AutoTokenizer.from_pretrained(demo_assets.llm)
    metas = get_metadata(read_samples(demo_assets.data_path), tok, [0, 10, 20, 9999], ["short", "medium", "long"])
    counts = {b: sum(m.bucket == b for m in metas) for b in ("short", "medium", "long")}
    assert all(c >= 700 for c in counts.values()), counts  # each bucket can give the eval its 666-668
