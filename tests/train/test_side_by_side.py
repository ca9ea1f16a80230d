"""Trials trained side by side (one backbone pass, stacked LLM batch) equal the same trials alone."""
import copy
import itertools

import pytest

from tests.helpers.tiny_models import tiny_config
from vlmtrack.sweep.run import side_by_side
from vlmtrack.tracking.base import JsonlTracker
from vlmtrack.train import loop, step

TOL = 1e-4  # float32 on CPU: a K*B batch sums in another order than a B batch


def six_trials(tiny_paths, tmp_path, tag):
    base = tiny_config(tiny_paths, tmp_path, train_steps=6, save_every=6, quick_eval_steps=0)
    trials = []
    for lr, ln in itertools.product([1e-3, 2e-3, 4e-3], [False, True]):
        cfg = copy.deepcopy(base)
        cfg.train.lr, cfg.model.vision_ln = lr, ln
        cfg.train.run_name = f"lr{lr:g}_ln{int(ln)}"
        cfg.train.output_dir = str(tmp_path / tag / cfg.train.run_name)
        trials.append(loop.Trial(cfg, JsonlTracker()))
    return trials


def curve(trial):
    return [v for _, v in trial.tracker.metrics("train_loss")]


@pytest.fixture(scope="module")
def alone(tiny_paths, tmp_path_factory):
    trials = six_trials(tiny_paths, tmp_path_factory.mktemp("alone"), "alone")
    results = [loop.train_trials([tr], log=lambda *_: None)[0] for tr in trials]
    return trials, results


def test_six_side_by_side_equal_alone(tiny_paths, tmp_path, alone):
    solo_trials, solo = alone
    group = six_trials(tiny_paths, tmp_path, "group")
    together = loop.train_trials(group, log=lambda *_: None)
    assert len({r["final_eval"]["eval_loss"] for r in together}) == 6  # really six different trials
    for s_tr, s, g_tr, g in zip(solo_trials, solo, group, together):
        assert curve(g_tr) == pytest.approx(curve(s_tr), abs=TOL)
        assert g["final_eval"]["eval_loss"] == pytest.approx(s["final_eval"]["eval_loss"], abs=TOL)
        for b in ("short", "medium", "long"):
            assert g["final_eval"][f"eval_loss_{b}"] == pytest.approx(s["final_eval"][f"eval_loss_{b}"], abs=TOL)
        for k in ("ablation_loss_correct", "ablation_loss_shuffled", "ablation_loss_zero", "ablation_loss_noise"):
            assert g["ablations"][k] == pytest.approx(s["ablations"][k], abs=TOL)


def test_nan_in_one_trial_leaves_the_others_unchanged(tiny_paths, tmp_path, alone, monkeypatch):
    solo_trials, solo = alone
    calls = {"n": 0}
    real = step.batch_losses

    def poison_trial_2(*a, **kw):
        calls["n"] += 1
        out = real(*a, **kw)
        if calls["n"] == 3 and out.shape[0] == 6:  # third training batch, trial index 2
            out = out.clone()
            out[2] = float("nan")
        return out

    monkeypatch.setattr(step, "batch_losses", poison_trial_2)
    group = six_trials(tiny_paths, tmp_path, "nan")
    results = side_by_side(group, log=lambda *_: None)
    assert results[2]["status"] == "FAILED" and "non-finite loss" in results[2]["error"]
    assert group[2].tracker.status == "FAILED"
    for i in (0, 1, 3, 4, 5):
        assert results[i]["status"] == "FINISHED"
        assert results[i]["final_eval"]["eval_loss"] == pytest.approx(solo[i]["final_eval"]["eval_loss"], abs=TOL)
        assert curve(group[i]) == pytest.approx(curve(solo_trials[i]), abs=TOL)
