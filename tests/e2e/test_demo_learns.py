"""The embedded demo's p11 run (the shared `mlflow run . -e p11` of the session) learns what issue 4 asks
of it: eval loss well below the frozen LM's text-only loss on the same captions, the vision ablations in
the order correct < shuffled < zero with positive deltas, and 64 non-empty golden captions."""
import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from vlmtrack.demo.lm_pretrain import caption_loss
from vlmtrack.demo.lm_pretrain_data import PretrainEncoder

pytestmark = pytest.mark.slow


def text_only_loss(assets, eval_ids: list[str]) -> float:
    """Token-weighted caption loss of the frozen LM given the instruction alone (no image slot)."""
    tok = AutoTokenizer.from_pretrained(assets.llm)
    lm = AutoModelForCausalLM.from_pretrained(assets.llm).eval()
    records = {r["id"]: r for r in json.loads(assets.data_path.read_text())}
    enc = PretrainEncoder(tok, num_latents=64)
    examples = [enc.encode(records[i], None, slot="text", rng=None) for i in eval_ids]
    return caption_loss(lm, examples, tok.pad_token_id)


@pytest.fixture(scope="module")
def metrics(demo_run):
    return json.loads((demo_run["out"] / "metrics.json").read_text())


def test_eval_loss_is_well_below_the_text_only_loss(metrics, demo_run, demo_assets):
    (split,) = (demo_run["out"] / "splits").glob("split_*.json")
    eval_ids = [e["id"] for e in json.loads(split.read_text())["eval"]]
    assert len(eval_ids) == metrics["final_eval"]["eval_examples_total"] == 2000
    text_only = text_only_loss(demo_assets, eval_ids)
    first, final = metrics["evals"][0]["eval_loss"], metrics["final_eval"]["eval_loss"]
    assert final <= first
    assert final < 0.9 * text_only, (final, text_only)


def test_ablations_hold_the_expected_order(metrics):
    a = metrics["ablations"]
    assert a["ablation_loss_correct"] < a["ablation_loss_shuffled"] < a["ablation_loss_zero"], a
    assert a["delta_shuffle"] > 0.1 and a["delta_zero"] > a["delta_shuffle"], a
    assert a["ablation_correct_lt_shuffled"] == a["ablation_shuffled_lt_zero"] == 1.0


def test_golden_dump_has_64_non_empty_predictions(metrics, demo_run):
    last = sorted((demo_run["out"] / "qual").glob("step_*_golden64.jsonl"),
                  key=lambda p: int(p.name.split("_")[1]))[-1]
    records = [json.loads(line) for line in last.read_text().splitlines()]
    assert len(records) == 64 and all(r["pred_text"].strip() for r in records)
    assert len({r["pred_text"] for r in records}) > 16, "not one generic caption"


def test_the_readme_quotes_this_demo(metrics):
    """The README's demo figures are this demo's (they went stale once): eval loss and ablation losses, to 8%:
    the same run on two 2-core CI hosts (different CPUs, so different float kernels) ended 3-6% apart."""
    import re
    from pathlib import Path

    text = " ".join((Path(__file__).resolve().parents[2] / "README.md").read_text().split())
    quoted = re.search(r"ends at eval loss ([\d.]+) .*? correct ([\d.]+) < shuffled ([\d.]+) < zero ([\d.]+), and "
                       r"noise ([\d.]+)", text)
    assert quoted, "the README's demo sentence moved: keep its figures and this test together"
    a = metrics["ablations"]
    actual = [metrics["final_eval"]["eval_loss"], a["ablation_loss_correct"], a["ablation_loss_shuffled"],
              a["ablation_loss_zero"], a["ablation_loss_noise"]]
    assert [float(x) for x in quoted.groups()] == pytest.approx(actual, rel=0.08)
