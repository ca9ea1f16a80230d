import json
from pathlib import Path

from vlmtrack.tracking.mlflow_tracker import MlflowTracker


def golden_rows(tiny_paths, n=6):
    import os
    images = sorted(p for p in tiny_paths["images"].rglob("*.jpg"))[:n]
    return [{"id": str(i), "image_relpath": os.path.relpath(p, tiny_paths["images"]), "gt_text": f"gt {i}",
             "pred_text": f"pred {i}", "bucket": "short", "label_len": 3} for i, p in enumerate(images)]


def test_tables_share_images_and_render_as_mlflow_tables(store, tiny_paths):
    tr = MlflowTracker(experiment="t", run_name="r")
    rows = golden_rows(tiny_paths)
    tr.log_table(rows, "golden/step_4_golden6.json", image_root=tiny_paths["images"], image_column="image_relpath")
    tr.log_table(rows, "golden/step_8_golden6.json", image_root=tiny_paths["images"], image_column="image_relpath")
    tr.log_params({"train.lr": 1e-3})
    for step in range(25):
        tr.log_metrics({"train_loss": 1.0 / (step + 1)}, step)
    tr.finish()
    run = store.get_run(tr.run_id)
    assert run.info.status == "FINISHED" and run.data.params["train.lr"] == "0.001"
    assert len(store.get_metric_history(tr.run_id, "train_loss")) == 25
    images = [f.path for f in store.list_artifacts(tr.run_id, "golden/images")]
    assert len(images) == 12  # 6 png + 6 webp thumbnails, once for both tables
    logged = json.loads(run.data.tags["mlflow.loggedArtifacts"])
    assert {"path": "golden/step_8_golden6.json", "type": "table"} in logged
    table = store.load_table(run.info.experiment_id, "golden/step_8_golden6.json", run_ids=[tr.run_id])
    assert len(table) == 6 and list(table.columns)[0] == "image"
    cell = table["image"][0]
    assert cell["type"] == "image" and cell["filepath"] in images and cell["compressed_filepath"] in images


def test_tracking_errors_never_kill_the_run(store, capsys):
    tr = MlflowTracker(experiment="t", run_name="flaky")

    def boom(*a, **kw):
        raise ConnectionError("tracking server went away")

    real = tr.client.log_batch
    tr.client.log_batch = boom
    tr.log_metrics({"x": 1.0}, 0)
    tr.flush()
    tr.client.log_batch = real
    tr.log_metrics({"x": 2.0}, 1)
    tr.finish("FAILED", "some error")
    assert any("tracking server went away" in e for e in tr.errors)
    run = store.get_run(tr.run_id)
    assert run.info.status == "FAILED" and run.data.tags["error"] == "some error"
    assert [m.value for m in store.get_metric_history(tr.run_id, "x")] == [2.0]
    tr.finish("FINISHED")  # a second status is ignored
    assert store.get_run(tr.run_id).info.status == "FAILED"


def test_attaches_to_the_run_mlflow_run_created(store, monkeypatch):
    exp = store.create_experiment("e")
    run_id = store.create_run(exp).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    tr = MlflowTracker(run_name="ignored")
    assert tr.run_id == run_id
    tr.log_metrics({"y": 3.0}, 0)
    tr.finish()
    assert store.get_run(run_id).data.metrics["y"] == 3.0


def test_a_nested_run_under_mlflow_run_is_new_and_beside_its_parent(store, monkeypatch):
    """`mlflow run . -e sweep` sets MLFLOW_RUN_ID for the sweep's own run; each trial's tracker must open
    a child run in the parent's experiment, not attach to the parent."""
    exp = store.create_experiment("sweep-exp")
    parent_id = store.create_run(exp).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", parent_id)
    parent = MlflowTracker(run_name="ignored")
    child = MlflowTracker(run_name="trial000", parent_run_id=parent.run_id)
    assert parent.run_id == parent_id and child.run_id != parent_id
    child.log_params({"train.lr": 1e-3})
    child.finish()
    run = store.get_run(child.run_id)
    assert run.info.experiment_id == exp and run.data.tags["mlflow.parentRunId"] == parent_id
    assert run.data.params == {"train.lr": "0.001"} and store.get_run(parent_id).data.params == {}


def test_experiments_open_on_training_runs_in_the_ui(store):
    """MLflow 3 shows an experiment of no declared kind in its GenAI view: a run tags its experiment as model
    training (Default included), and leaves a kind someone chose alone."""
    from vlmtrack.tracking.mlflow_tracker import EXPERIMENT_KIND, TRAINING_KIND

    tr = MlflowTracker(experiment="kind", run_name="r")
    tr.finish()
    assert store.get_experiment_by_name("kind").tags[EXPERIMENT_KIND] == TRAINING_KIND
    genai = store.create_experiment("traces", tags={EXPERIMENT_KIND: "genai_development"})
    MlflowTracker(experiment_id=genai, run_name="r").finish()
    assert store.get_experiment(genai).tags[EXPERIMENT_KIND] == "genai_development"
    default_run = store.create_run("0").info.run_id  # as `mlflow run` creates it, in Default
    MlflowTracker(run_id=default_run).finish()
    assert store.get_experiment("0").tags[EXPERIMENT_KIND] == TRAINING_KIND


def test_a_checkpoint_a_registered_model_uses_is_never_deleted(store, tmp_path):
    """Retention deletes a checkpoint's logged model with its files, except one a registered model version was
    made from (its logged model, or a runs:/ path: checkpoints logged as run artifacts before they were logged
    models go the same way, and step_16's version does not protect step_160)."""
    from vlmtrack.tracking.artifacts import STEP_TAG, checkpoint_models

    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "connector.json").write_text("{}")
    tr = MlflowTracker(experiment="keep", run_name="r")
    for step in (4, 8, 12):
        tr.log_checkpoint(step, [folder / "connector.json"], {"eval_loss": 1.0 / step})
    for step in (16, 160):  # the older layout: run artifacts
        tr.log_artifact(folder / "connector.json", f"checkpoints/step_{step}")
    tr.flush()
    (at_8,) = checkpoint_models(store, tr.run_id, 8)
    store.create_registered_model("connector")
    store.create_model_version("connector", f"models:/{at_8.model_id}", run_id=tr.run_id, model_id=at_8.model_id)
    store.create_model_version("connector", f"runs:/{tr.run_id}/checkpoints/step_16", run_id=tr.run_id)
    for step in (4, 8, 12, 16, 160):
        tr.delete_checkpoint(step)
    tr.finish()
    live = store.search_logged_models([tr.experiment_id], filter_string=f"source_run_id='{tr.run_id}'")
    assert [m.tags[STEP_TAG] for m in live] == ["8"]
    assert [f.path for f in store.list_artifacts(tr.run_id, "checkpoints")] == ["checkpoints/step_16"]
    assert not tr.errors


def test_a_checkpoint_save_survives_an_outage_and_a_refused_one_is_counted(store, tmp_path, monkeypatch):
    """A save is one queued call: held while the server is away and retried whole, with the model made once; a
    save the store refuses for good leaves its model FAILED and is counted in tracking_failed_calls."""
    import requests

    from vlmtrack.tracking import mlflow_tracker as M
    from vlmtrack.tracking.artifacts import STEP_TAG

    (tmp_path / "connector.json").write_text("{}")
    monkeypatch.setattr(M, "RETRY_S", 0.01)
    tr = MlflowTracker(experiment="outage", run_name="r")
    real, calls = tr.client.log_model_artifact, []

    def flaky(model_id, path, artifact_path=None):
        calls.append(model_id)
        if len(calls) <= 2:
            raise requests.ConnectionError("server away")
        if "refused" in Path(path).name:
            raise ValueError("artifact store says no")
        return real(model_id, path, artifact_path)

    tr.client.log_model_artifact = flaky
    tr.log_checkpoint(4, [tmp_path / "connector.json"], {"eval_loss": 1.5})
    assert tr.flush(timeout=30)
    (tmp_path / "refused.json").write_text("{}")
    tr.log_checkpoint(8, [tmp_path / "refused.json"], {"eval_loss": 1.2})
    tr.finish()
    assert len(set(calls[:3])) == 1  # three tries, one model
    models = {m.tags[STEP_TAG]: m for m in store.search_logged_models([tr.experiment_id])}
    assert models["4"].status.to_int() == 2 and models["8"].status.to_int() == 3  # READY, FAILED
    assert store.get_run(tr.run_id).data.metrics["tracking_failed_calls"] == 1
    assert [e.split(":")[0] for e in tr.errors] == ["log_checkpoint"]


OPENER = """
import os, sys, time
from pathlib import Path
from vlmtrack.tracking.mlflow_tracker import MlflowTracker

folder, name, rounds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
(folder / f"ready-{name}").touch()
for i in range(rounds):
    while not (folder / f"go{i}").exists():  # both workers start each round within a millisecond or two
        time.sleep(0.001)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder}/mlflow{i}.db"
    try:
        MlflowTracker(experiment="sweep", run_name=name).finish()
        (folder / f"done{i}-{name}").write_text("ok")
    except Exception as e:
        (folder / f"done{i}-{name}").write_text(f"{type(e).__name__}: {e}"[:300])
"""


def test_workers_started_together_on_a_fresh_sqlite_store_both_start(tmp_path):
    """Two sweep workers opening one new local store at the same moment both create MLflow's schema unless
    it is guarded; the loser died ("table ... already exists"). Three fresh stores, two processes each."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    from mlflow import MlflowClient

    rounds, repo = 3, Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(repo))
    env.pop("MLFLOW_RUN_ID", None)
    procs = [subprocess.Popen([sys.executable, "-c", OPENER, str(tmp_path), name, str(rounds)], env=env)
             for name in ("a", "b")]
    try:
        results = []
        for i in range(-1, rounds):
            deadline = time.time() + 120
            wanted = [f"ready-{n}" if i < 0 else f"done{i}-{n}" for n in "ab"]
            while not all((tmp_path / w).exists() for w in wanted) and time.time() < deadline:
                assert all(p.poll() is None or (tmp_path / w).exists() for p, w in zip(procs, wanted)), \
                    f"a worker exited before {wanted}"
                time.sleep(0.01)
            if i >= 0:
                results.append([(tmp_path / w).read_text() for w in wanted])
            if i + 1 < rounds:
                (tmp_path / f"go{i + 1}").touch()
    finally:
        for p in procs:
            p.wait(timeout=60)
    assert results == [["ok", "ok"]] * rounds, results
    for i in range(rounds):  # one experiment, both runs in it
        client = MlflowClient(f"sqlite:///{tmp_path}/mlflow{i}.db")
        exp = client.get_experiment_by_name("sweep")
        assert len(client.search_runs([exp.experiment_id])) == 2


def test_two_runs_logging_the_same_dataset_at_once_both_get_it(store):
    """MLflow's log_inputs looks the dataset up, then inserts it. Here a second run's log_inputs completes
    between the first run's lookup and its insert, the interleaving two sweep workers met in CI (UNIQUE
    constraint failed: datasets.experiment_id, datasets.name, datasets.digest). Both runs get the dataset,
    with no tracking error."""
    import threading

    from mlflow.entities import Dataset, DatasetInput
    from sqlalchemy import event
    from sqlalchemy.orm import Session

    from vlmtrack.data.pipeline import DatasetRecord

    first, second = MlflowTracker(experiment="race", run_name="a"), MlflowTracker(experiment="race", run_name="b")
    record = [DatasetRecord("train", "demo-train", "d1g3st", "/data/train.json", {"num_rows": 3})]
    interleaved = []

    def other_run_inserts_first(session, *_):
        if not interleaved and any(type(o).__name__ == "SqlDataset" for o in session.new):
            interleaved.append(True)  # once: the other run's call runs to its end on its own connection
            same = DatasetInput(Dataset("demo-train", "d1g3st", "local", "{}"))
            t = threading.Thread(target=lambda: second.client.log_inputs(second.run_id, datasets=[same]))
            t.start()
            t.join()

    event.listen(Session, "before_flush", other_run_inserts_first)
    try:
        first.log_datasets(record)
        first.flush()
    finally:
        event.remove(Session, "before_flush", other_run_inserts_first)
    first.finish()
    second.finish()
    assert interleaved and first.errors == []
    for tr in (first, second):
        got = [(d.dataset.name, d.dataset.digest) for d in store.get_run(tr.run_id).inputs.dataset_inputs]
        assert got == [("demo-train", "d1g3st")], (tr.run_id, got)
