"""Checkpoints as MLflow logged models: a short training on the tiny models against a real sqlite store ranks
its kept checkpoints by eval loss, retention deletes a dropped one's model and files, `runs:/.../checkpoints/
step_N` still loads, and a checkpoint a registered model version was made from is never deleted."""
from pathlib import Path

import pytest
from mlflow import MlflowClient
from safetensors.torch import load_file

from tests.helpers.tiny_models import tiny_config
from vlmtrack.model.connector_io import META_FILE, WEIGHTS_FILE, checkpoint_dir
from vlmtrack.tracking.artifacts import STEP_TAG, download_checkpoint
from vlmtrack.tracking.base import finishing
from vlmtrack.tracking.mlflow_tracker import MlflowTracker
from vlmtrack.train import checkpoint as ckpt
from vlmtrack.train import loop


def logged_steps(models) -> list[int]:
    return [int(m.tags[STEP_TAG]) for m in models]


def test_a_runs_checkpoints_are_logged_models_ranked_by_eval_loss(store, tiny_paths, tmp_path):
    cfg = tiny_config(tiny_paths, tmp_path / "out", train_steps=10, save_every=2, full_eval_every="2",
                      quick_eval_steps=0, keep_checkpoints=2)
    cfg.data.num_workers = 0
    tracker = MlflowTracker(experiment="ckpt-models", run_name="r")
    with finishing(tracker):
        outcome = loop.train(cfg, tracker, log=lambda *_: None)
        tracker.log_artifact(cfg.output_dir / "config.yaml", "config")  # as `vlmtrack train` does
    run_id, exp = tracker.run_id, tracker.experiment_id
    written = [2, 4, 6, 8, 10]
    loss_at = {e["step"]: e["eval_loss"] for e in outcome["evals"]}
    kept = sorted(set(written) - set(ckpt.checkpoints_to_drop(written, outcome["evals"], 2)))
    assert len(kept) in (2, 3) and 10 in kept

    ranked = MlflowClient().search_logged_models(
        [exp], filter_string=f"source_run_id='{run_id}'",
        order_by=[{"field_name": "metrics.eval_loss", "ascending": True}])
    assert logged_steps(ranked) == sorted(kept, key=lambda s: loss_at[s])  # only the kept ones, best first
    best = ranked[0]
    assert int(best.tags[STEP_TAG]) == ckpt.best_checkpoint(kept, outcome["evals"])[0]
    linked = {m.key: m.value for m in best.metrics}
    assert linked["eval_loss"] == pytest.approx(loss_at[int(best.tags[STEP_TAG])])
    assert {"eval_loss_short", "eval_label_tokens_total"} <= set(linked) and best.status.to_int() == 2  # READY
    # the run's eval history is untouched by the re-sent values: one point per eval
    assert [m.step for m in store.get_metric_history(run_id, "eval_loss")] == written
    # the files are stored once: as the logged model, not also as run artifacts
    assert "checkpoints" not in {f.path for f in store.list_artifacts(run_id)}
    assert all(sorted(model_files(m)) == sorted([META_FILE, WEIGHTS_FILE]) for m in ranked)

    # a checkpoint retention dropped: its model deleted, its files gone (MLflow's delete only marks a model)
    gone = deleted_models(store)
    assert sorted(logged_steps(gone)) == [s for s in written if s not in kept]
    assert all(m.source_run_id == run_id and model_files(m) == [] for m in gone)

    folder, config = download_checkpoint(f"runs:/{run_id}/checkpoints/step_{best.tags[STEP_TAG]}")
    assert folder.name == f"step_{best.tags[STEP_TAG]}" and config.name == "config.yaml"
    assert sorted(p.name for p in folder.iterdir()) == sorted([META_FILE, WEIGHTS_FILE])
    local = checkpoint_dir(cfg.output_dir, int(best.tags[STEP_TAG])) / WEIGHTS_FILE
    downloaded, on_disk = load_file(folder / WEIGHTS_FILE), load_file(local)
    assert all((downloaded[k] == on_disk[k]).all() for k in on_disk)
    same, _ = download_checkpoint(f"models:/{best.model_id}")  # the logged model's own URI
    assert same.name == folder.name and load_file(same / WEIGHTS_FILE).keys() == on_disk.keys()
    with pytest.raises(FileNotFoundError, match=rf"no checkpoint step_{gone[0].tags[STEP_TAG]} in MLflow; it keeps "
                                                rf"{', '.join(f'step_{k}' for k in kept)} \(train.keep_checkpoints"):
        download_checkpoint(f"runs:/{run_id}/checkpoints/step_{gone[0].tags[STEP_TAG]}")


def deleted_models(store) -> list:
    sql = store._tracking_client.store  # the search API leaves deleted models out
    return [sql.get_logged_model(m, allow_deleted=True) for m in sql._get_deleted_logged_models()]


def model_files(model) -> list[str]:
    from mlflow.utils.file_utils import local_file_uri_to_path

    folder = Path(local_file_uri_to_path(model.artifact_location))
    return [p.name for p in folder.iterdir()] if folder.exists() else []
