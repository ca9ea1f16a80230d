import json

import pytest
import torch

from tests.helpers.tiny_models import tiny_config
from vlmtrack.model import backbone as backbone_mod
from vlmtrack.sweep.score import composite_score
from vlmtrack.tracking.base import JsonlTracker, finishing
from vlmtrack.train import checkpoint as ckpt
from vlmtrack.train import loop, setup
from vlmtrack.train import step as train_step


def test_training_moves_only_the_connector_and_writes_everything(tiny_paths, tmp_path, monkeypatch):
    loaded = {}
    real_load = backbone_mod.load_backbone

    def spy(*a, **kw):
        loaded["bb"] = real_load(*a, **kw)
        loaded["before"] = {n: p.clone() for n, p in loaded["bb"].llm.named_parameters()}
        loaded["tower"] = {n: p.clone() for n, p in loaded["bb"].tower.named_parameters()}
        return loaded["bb"]

    monkeypatch.setattr(setup, "load_backbone", spy)
    out = tmp_path / "run"
    tracker = JsonlTracker()
    m = loop.train(tiny_config(tiny_paths, out), tracker, log=lambda *_: None, score=composite_score)
    bb = loaded["bb"]
    assert all(torch.equal(p, loaded["before"][n]) for n, p in bb.llm.named_parameters())
    assert all(torch.equal(p, loaded["tower"][n]) for n, p in bb.tower.named_parameters())
    first, _ = ckpt.load_connector_weights(out / "checkpoints" / "step_4")
    last, meta = ckpt.load_connector_weights(out / "checkpoints" / "step_8")
    assert any(not torch.equal(first[k], last[k]) for k in first)
    assert meta["connector"]["num_latents"] == 4 and meta["llm"] == str(tiny_paths["llm"])
    # metrics.json: final eval overall + buckets, ablations, step-time stats, score
    doc = json.loads((out / "metrics.json").read_text())
    assert doc == json.loads(json.dumps(m))
    assert {"eval_loss", "eval_loss_short", "eval_loss_medium", "eval_loss_long",
            "eval_label_tokens_total", "eval_examples_total", "eval_truncated_pct"} <= set(doc["final_eval"])
    assert doc["final_eval"]["eval_examples_total"] == 48
    assert {"delta_shuffle", "delta_zero", "delta_noise", "ablation_order_ok"} <= set(doc["ablations"])
    assert {"step_time_mean_s", "step_time_p50_s", "step_time_p90_s", "step_time_max_s",
            "data_wait_share"} <= set(doc["step_time"])
    assert doc["score"] == pytest.approx(doc["final_eval"]["eval_loss"]
                                         - 0.1 * (doc["ablations"]["delta_shuffle"] + doc["ablations"]["delta_zero"]))
    # golden dumps at each save, one non-empty prediction per item, generated from inputs_embeds
    for step in (4, 8):
        rows = [json.loads(x) for x in (out / "qual" / f"step_{step}_golden6.jsonl").read_text().splitlines()]
        assert len(rows) == 6 and all(r["pred_text"] for r in rows)
        assert set(rows[0]) == {"id", "bucket", "gt_text", "pred_text", "image_relpath", "label_len",
                                "pred_tokens_len", "pred_hash"}
    assert [s for s, _ in tracker.metrics("quick_eval_loss")] == [4]
    assert [s for s, _ in tracker.metrics("train_loss")] == [2, 4, 6, 8]
    assert (out / "splits" / "split_seed42_eval48.json").exists() and (out / "config.yaml").exists()
    # each save's checkpoint goes to the tracker with that step's full eval (step 4 has none: eval at the end)
    saved = [(e["step"], e["files"], sorted(e["metrics"])[:2]) for e in tracker.events if e["kind"] == "checkpoint"]
    assert saved == [(4, ["connector.safetensors", "connector.json"], []),
                     (8, ["connector.safetensors", "connector.json"], ["eval_examples_long", "eval_examples_medium"])]
    (datasets,) = [e["datasets"] for e in tracker.events if e["kind"] == "datasets"]
    assert [(d["context"], d["profile"]["num_rows"]) for d in datasets] == [("train", 112), ("eval", 48), ("golden", 6)]
    assert [e["kind"] for e in tracker.events].count("monitor_system") == 1  # train.system_metrics: on by default


def test_system_metrics_off_with_a_config_key(tiny_paths, tmp_path):
    tracker = JsonlTracker()
    loop.train(tiny_config(tiny_paths, tmp_path / "run", train_steps=2, save_every=2, system_metrics=False,
                           quick_eval_steps=0), tracker, log=lambda *_: None)
    kinds = [e["kind"] for e in tracker.events]
    assert "monitor_system" not in kinds and "datasets" in kinds and "checkpoint" in kinds


def test_kill_and_resume_matches_uninterrupted_run(tiny_paths, tmp_path, monkeypatch):
    full = loop.train(tiny_config(tiny_paths, tmp_path / "full", gradient_accum=2), JsonlTracker(),
                      log=lambda *_: None)

    real_save = ckpt.save_checkpoint

    def save_then_die(out_dir, step, *a, **kw):
        path = real_save(out_dir, step, *a, **kw)
        if step == 4:
            raise KeyboardInterrupt("killed after the step-4 checkpoint")
        return path

    monkeypatch.setattr(ckpt, "save_checkpoint", save_then_die)
    cfg = tiny_config(tiny_paths, tmp_path / "resumed", gradient_accum=2)
    with pytest.raises(KeyboardInterrupt):
        loop.train(cfg, JsonlTracker(), log=lambda *_: None)
    monkeypatch.setattr(ckpt, "save_checkpoint", real_save)
    cfg.train.resume_from = "latest"
    resumed = loop.train(cfg, JsonlTracker(), log=lambda *_: None)
    assert resumed["final_eval"]["eval_loss"] == pytest.approx(full["final_eval"]["eval_loss"], abs=1e-6)
    for b in ("short", "medium", "long"):
        assert resumed["final_eval"][f"eval_loss_{b}"] == pytest.approx(full["final_eval"][f"eval_loss_{b}"], abs=1e-6)
    assert resumed["ablations"]["delta_shuffle"] == pytest.approx(full["ablations"]["delta_shuffle"], abs=1e-6)


def test_nan_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(tiny_paths, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = train_step.batch_losses

    def poisoned(*a, **kw):
        calls["n"] += 1
        out = real(*a, **kw)
        return out * float("nan") if calls["n"] == 6 else out  # the 6th training batch

    monkeypatch.setattr(train_step, "batch_losses", poisoned)
    tracker = JsonlTracker()
    out = tmp_path / "nan"
    with pytest.raises(loop.NonFiniteLossError, match="non-finite loss at or before step 6") as err, finishing(tracker):
        loop.train(tiny_config(tiny_paths, out, quick_eval_steps=0), tracker, log=lambda *_: None)
    assert "step_4" in str(err.value)
    assert ckpt.latest_checkpoint(out).name == "step_4"
    weights, _ = ckpt.load_connector_weights(out / "checkpoints" / "step_4")
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert tracker.status == "FAILED"


def test_progress_lines_by_fraction_and_a_tqdm_bar_when_asked(tiny_paths, tmp_path, capsys):
    lines = []
    cfg = tiny_config(tiny_paths, tmp_path / "bar", quick_eval_steps=0, run_golden_every="never",
                      progress_percent=0.25, tqdm_disable=False)
    cfg.eval.run_ablations = False
    loop.train(cfg, JsonlTracker(), log=lines.append)
    assert [x.split()[1] for x in lines if x.startswith("[train]")] == ["25%", "50%", "75%", "100%"]  # 8 steps
    assert "8/8" in capsys.readouterr().err  # the bar reached the last step
    cfg.train.tqdm_disable, cfg.train.output_dir = True, str(tmp_path / "no-bar")
    loop.train(cfg, JsonlTracker(), log=lines.append)
    assert "8/8" not in capsys.readouterr().err


def test_a_checkpoint_names_its_towers_by_absolute_path(tiny_paths, tmp_path, monkeypatch):
    """Relative model paths (the demo's data/demo/...) are resolved when the checkpoint is written, so
    `vlmtrack ablate /abs/.../step_N` loads from any folder; a hub id stays as it is."""
    from vlmtrack.model.connector_io import tower_reference

    monkeypatch.chdir(tiny_paths["llm"].parent)
    cfg = tiny_config(tiny_paths, tmp_path / "rel", train_steps=4, save_every=4, quick_eval_steps=0,
                      run_golden_every="never")
    cfg.model.llm, cfg.model.vision, cfg.eval.run_ablations = "llm", "./vision", False
    loop.train(cfg, JsonlTracker(), log=lambda *_: None)
    _, meta = ckpt.load_connector_weights(tmp_path / "rel" / "checkpoints" / "step_4")
    assert meta["llm"] == str(tiny_paths["llm"].resolve()) and meta["vision"] == str(tiny_paths["vision"].resolve())
    assert tower_reference("Qwen/Qwen3-0.6B") == "Qwen/Qwen3-0.6B"


def test_bf16_on_cpu_trains_evaluates_and_captions(tiny_paths, tmp_path):
    """The spec's configs say train.precision=bf16; on a CPU the bf16 towers meet the fp32 connector through
    autocast (before: the first matmul failed on mixed dtypes)."""
    cfg = tiny_config(tiny_paths, tmp_path / "bf16", quick_eval_steps=0, run_golden_every="end")
    cfg.train.precision = "bf16"
    cfg.eval.run_ablations = False
    result = loop.train(cfg, JsonlTracker(), log=lambda *_: None)
    assert result["status"] == "FINISHED" and torch.isfinite(torch.tensor(result["final_eval"]["eval_loss"]))
    assert result["budget"]["golden_time_s"] > 0
