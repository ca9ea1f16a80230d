import math

import torch

from vlmtrack.eval.ablations import ablation_metrics
from vlmtrack.eval.evaluate import LossSums
from vlmtrack.eval.golden_gen import generated_part


def test_bucket_losses_recombine_with_token_counts():
    s = LossSums()
    rows = [("short", 12.0, 5), ("short", 3.0, 4), ("medium", 40.0, 15), ("long", 75.0, 30), ("long", 33.0, 22)]
    for b, loss, n in rows:
        s.add(b, loss, n, truncated=False)
    m = s.metrics()
    assert math.isclose(m["eval_loss"], sum(r[1] for r in rows) / sum(r[2] for r in rows))
    recombined = sum(m[f"eval_loss_{b}"] * m[f"eval_label_tokens_{b}"] for b in ("short", "medium", "long"))
    assert math.isclose(recombined / m["eval_label_tokens_total"], m["eval_loss"])
    assert m["eval_examples_total"] == 5 and m["eval_examples_long"] == 2 and m["eval_truncated_pct"] == 0


def test_ablation_order_and_deltas():
    m = ablation_metrics({"correct": 1.0, "shuffled": 1.5, "zero": 2.0, "noise": 1.8})
    assert m["delta_shuffle"] == 0.5 and m["delta_zero"] == 1.0 and math.isclose(m["delta_noise"], 0.8)
    assert m["ablation_correct_lt_shuffled"] == 1 and m["ablation_shuffled_lt_zero"] == 1
    assert m["ablation_zero_lt_noise"] == 0 and m["ablation_order_ok"] == 0


def test_generated_part_keeps_new_tokens():
    prompt = torch.tensor([[5, 6, 7, 8, 9, 10]])
    only_new = torch.tensor([[11, 12]])  # generate(inputs_embeds=...) returns just these
    assert torch.equal(generated_part(only_new, prompt), only_new)
    with_prompt = torch.cat([prompt, only_new], 1)  # generate(input_ids=...) echoes the prompt
    assert torch.equal(generated_part(with_prompt, prompt), only_new)
    long_new = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])  # longer than the prompt, but not the prompt
    assert torch.equal(generated_part(long_new, prompt), long_new)


def test_the_ablation_order_says_which_comparison_fails():
    from vlmtrack.eval.ablations import ablation_metrics, order_text

    demo_like = ablation_metrics({"correct": 0.51, "shuffled": 1.05, "zero": 1.39, "noise": 0.82})
    assert demo_like["ablation_order_ok"] == 0.0
    assert order_text(demo_like) == ("correct < shuffled < zero < noise: zero < noise does not hold "
                                     "(ablation_order_ok=0)")
    assert order_text(ablation_metrics({"correct": 1, "shuffled": 2, "zero": 3, "noise": 4})) == \
        "correct < shuffled < zero < noise: holds"


def test_every_mode_in_one_pass_equals_one_pass_per_mode(tiny_paths, tmp_path):
    """The ablations read each batch once for all four modes: the sums equal evaluate()'s, mode by mode."""
    from tests.data.test_dataset import tiny_dataset
    from vlmtrack.data.loader import loader
    from vlmtrack.eval.evaluate import evaluate, evaluate_modes
    from vlmtrack.model.backbone import VISION_MODES
    from vlmtrack.model.connector import Connector

    bb, ds = tiny_dataset(tiny_paths, tmp_path)
    torch.manual_seed(0)
    connectors = [Connector(bb.vision_dim, bb.llm_dim, 4, 1, 2) for _ in range(2)]
    batches = [[0, 1], [2, 3]]
    cpu = torch.device("cpu")
    together = evaluate_modes(bb, connectors, loader(ds, batches, bb.pad_id, 0), cpu, torch.float32, VISION_MODES, 7)
    for mode in VISION_MODES:
        alone = evaluate(bb, connectors, loader(ds, batches, bb.pad_id, 0), cpu, torch.float32, mode, 7)
        assert [s.metrics() for s in together[mode]] == [s.metrics() for s in alone]
    assert together["zero"][0].metrics()["eval_loss"] != together["correct"][0].metrics()["eval_loss"]
