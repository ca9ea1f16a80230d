"""A short training on the tiny models logged to a real sqlite store (once for the module): its kept checkpoints
are logged models ranked by eval loss, retention deletes a dropped one's model and files, `runs:/.../checkpoints/
step_N` still loads; the train split, eval set and golden set are the run's datasets with our hashes as
digests; system metrics are sampled while it trains."""
import json
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


@pytest.fixture(scope="module")
def trained(tiny_paths, tmp_path_factory):
    """(client, tracker, outcome, cfg) of a 10-step run saving every 2 steps, keeping 2 (+ the best), with system
    metrics sampled every 0.5 s."""
    import mlflow

    tmp = tmp_path_factory.mktemp("logged")
    uri = f"sqlite:///{tmp}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.delenv("MLFLOW_RUN_ID", raising=False)
        mp.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")
        mlflow.set_tracking_uri(uri)
        cfg = tiny_config(tiny_paths, tmp / "out", train_steps=10, save_every=2, full_eval_every="2",
                          quick_eval_steps=0, keep_checkpoints=2)
        cfg.data.num_workers = 0
        tracker = MlflowTracker(experiment="logged", run_name="r")
        with finishing(tracker):
            outcome = loop.train(cfg, tracker, log=lambda *_: None)
            tracker.log_artifact(cfg.output_dir / "config.yaml", "config")  # as `vlmtrack train` does
        yield MlflowClient(uri), tracker, outcome, cfg


def test_a_runs_checkpoints_are_logged_models_ranked_by_eval_loss(trained):
    store, tracker, outcome, cfg = trained
    run_id, exp = tracker.run_id, tracker.experiment_id
    written = [2, 4, 6, 8, 10]
    loss_at = {e["step"]: e["eval_loss"] for e in outcome["evals"]}
    kept = sorted(set(written) - set(ckpt.checkpoints_to_drop(written, outcome["evals"], 2)))
    assert len(kept) in (2, 3) and 10 in kept

    ranked = store.search_logged_models(
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


def test_datasets_and_system_metrics_on_the_run(trained):
    store, tracker, outcome, _ = trained
    run = store.get_run(tracker.run_id)
    contexts = {}
    for d in run.inputs.dataset_inputs:
        (context,) = [t.value for t in d.tags if t.key == "mlflow.data.context"]
        contexts[context] = d.dataset
    assert sorted(contexts) == ["eval", "golden", "train"]
    assert contexts["train"].digest == run.data.tags["train_split_hash"]
    assert contexts["eval"].digest == outcome["split"]["eval_hash"] == run.data.tags["split_hash"]
    assert contexts["golden"].digest == outcome["golden"]["hash"] == run.data.tags["golden_hash"]
    assert json.loads(contexts["eval"].profile) == {"num_rows": 48, "buckets": outcome["split"]["bucket_counts"]}
    assert json.loads(contexts["golden"].profile)["num_rows"] == 6 and contexts["golden"].name.endswith("-golden6")
    # a checkpoint's eval metrics name the eval set they were measured on
    (best, *_) = store.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id='{run.info.run_id}'")
    assert {(m.dataset_name, m.dataset_digest) for m in best.metrics} == {(contexts["eval"].name,
                                                                          contexts["eval"].digest)}
    # system metrics: sampled every 0.5 s while it trained (steps 0, 1, 2, ...); how many samples a few
    # seconds of training give depends on the machine's load (CI saw 2), so the count is not pinned
    cpu = store.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")
    assert len(cpu) >= 1 and [m.step for m in cpu] == list(range(len(cpu)))
    assert {"system/system_memory_usage_megabytes", "system/system_memory_usage_percentage"} <= set(run.data.metrics)
    assert 0 < run.data.metrics["system/system_memory_usage_percentage"] < 100


def deleted_models(store) -> list:
    sql = store._tracking_client.store  # the search API leaves deleted models out
    return [sql.get_logged_model(m, allow_deleted=True) for m in sql._get_deleted_logged_models()]


def model_files(model) -> list[str]:
    from mlflow.utils.file_utils import local_file_uri_to_path

    folder = Path(local_file_uri_to_path(model.artifact_location))
    return [p.name for p in folder.iterdir()] if folder.exists() else []
