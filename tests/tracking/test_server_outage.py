"""The tracking server goes away mid-run: logging calls return at once, what is logged while it is away
arrives when it returns, and what cannot arrive is counted, exactly, as lost."""
import json
import os
import time

import pytest
import requests
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from tests.helpers.servers import free_port, mlflow_server
from vlmtrack.config import Config
from vlmtrack.tracking import mlflow_tracker as T
from vlmtrack.tracking.mlflow_tracker import LOST_METRICS, MlflowTracker
from vlmtrack.tracking.session import tracked_run


@pytest.fixture(autouse=True)
def fresh_env(monkeypatch):
    """The tracker sets MLflow's HTTP bounds for the process where unset: start unset, leave them unset."""
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    saved = {k: os.environ.pop(k, None) for k in T.HTTP_BOUNDS}
    yield
    for k, v in saved.items():
        os.environ.pop(k, None)
        if v is not None:
            os.environ[k] = v


def wait_for(cond, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def steps(client, run_id, key) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


@pytest.mark.slow
def test_metrics_logged_while_the_server_is_away_arrive_when_it_returns(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(T, "METRIC_FLUSH_S", 0.0)  # every step its own batch: each one meets the outage
    monkeypatch.setattr(T, "RETRY_S", 0.5)
    port, store = free_port(), f"sqlite:///{tmp_path}/server.db"
    extra = ("--artifacts-destination", str(tmp_path / "artifacts"))
    with mlflow_server(store, tmp_path / "first.log", *extra, port=port, jobs=False) as url:
        tr = MlflowTracker(tracking_uri=url, experiment="outage", run_name="away")
        for step in range(10):
            tr.log_metrics({"train_loss": step / 10, "lr": 1e-3}, step)
        assert tr.flush(timeout=30)
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"

    stopped, slowest = time.monotonic(), 0.0
    note = tmp_path / "note.txt"
    note.write_text("logged while the server was away")
    for step in range(10, 20):
        t0 = time.perf_counter()
        tr.log_metrics({"train_loss": step / 10, "lr": 1e-3}, step)
        if step == 15:
            tr.set_tags({"logged_while_away": "yes"})
            tr.log_artifact(note, "away")
        slowest = max(slowest, time.perf_counter() - t0)
        time.sleep(0.1)
    assert slowest < 0.5  # the training thread never waits on the server
    # noticed within seconds: MLflow's default retries (7, exponential backoff) would take minutes
    assert wait_for(lambda: tr.away_since is not None, 15), "the outage was never noticed"
    assert tr.away_since - stopped < 15
    assert not tr.flush(timeout=0.5)  # held, not dropped

    with mlflow_server(store, tmp_path / "second.log", *extra, port=port, jobs=False) as url:
        for step in range(20, 30):
            tr.log_metrics({"train_loss": step / 10, "lr": 1e-3}, step)
        tr.finish()
        client = MlflowClient(url)
        run = client.get_run(tr.run_id)
        assert run.info.status == "FINISHED"
        for key in ("train_loss", "lr"):
            assert steps(client, tr.run_id, key) == list(range(30))
        assert {m.step: m.value for m in client.get_metric_history(tr.run_id, "train_loss")} == {
            s: s / 10 for s in range(30)}
        assert tr.lost_metrics == 0 and LOST_METRICS not in run.data.metrics and tr.errors == []
        assert run.data.tags["logged_while_away"] == "yes"
        assert [f.path for f in client.list_artifacts(tr.run_id, "away")] == ["away/note.txt"]
    err = capsys.readouterr().err
    assert "tracking server unreachable" in err and "tracking server back after" in err


def unreachable(*args, **kwargs):
    """What MlflowClient raises when the server is down: an MlflowException raised while handling the
    requests error (rest_utils.http_request)."""
    try:
        raise requests.ConnectionError("[Errno 111] Connection refused")
    except requests.ConnectionError as e:
        raise MlflowException(f"API request to http://127.0.0.1:9/api/2.0/mlflow/runs/log-batch failed with "
                              f"exception {e}")


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('outage')}/mlflow.db"
    MlflowClient(uri).search_experiments()  # MLflow creates its tables once, not once per test
    return uri


@pytest.fixture
def store(store_uri, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(store_uri)  # an earlier test may have set the process-wide URI elsewhere
    monkeypatch.setattr(T, "METRIC_FLUSH_S", 0.0)
    monkeypatch.setattr(T, "RETRY_S", 0.05)
    yield MlflowClient(store_uri)
    mlflow.set_tracking_uri(previous)


def test_held_metrics_beyond_the_bound_are_counted_lost_and_reported_when_it_returns(store, monkeypatch, capsys):
    monkeypatch.setattr(T, "HOLD_METRICS", 6)
    tr = MlflowTracker(experiment="bound", run_name="overflow")
    real = tr.client.log_batch
    for step in range(5):
        tr.log_metrics({"train_loss": 1.0, "lr": 0.1}, step)
    assert tr.flush(timeout=10)
    tr.client.log_batch = unreachable
    for step in range(5, 15):  # 20 values while away: the newest 6 are held, the oldest 14 dropped
        tr.log_metrics({"train_loss": 1.0, "lr": 0.1}, step)
    assert wait_for(lambda: tr.lost_metrics == 14, 10), tr.lost_metrics
    tr.client.log_batch = real
    assert wait_for(lambda: tr.away_since is None, 10)  # the next attempt finds it back
    for step in range(15, 20):
        tr.log_metrics({"train_loss": 1.0, "lr": 0.1}, step)
    tr.finish()

    held = list(range(0, 5)) + [12, 13, 14] + list(range(15, 20))
    assert steps(store, tr.run_id, "train_loss") == held and steps(store, tr.run_id, "lr") == held
    missing = 2 * 20 - 2 * len(held)
    assert tr.lost_metrics == missing == 14
    run = store.get_run(tr.run_id)
    assert run.data.tags[LOST_METRICS] == "14" and run.data.metrics[LOST_METRICS] == 14
    assert run.info.status == "FINISHED"
    err = capsys.readouterr().err
    assert "dropping the oldest" in err and "14 metric values lost" in err


def test_a_server_that_never_returns_costs_finish_a_bounded_wait_and_the_count(store, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(T, "FINISH_WAIT_S", 1.0)
    cfg = Config()
    cfg.train.output_dir, cfg.train.run_name = str(tmp_path / "out"), "never-back"
    with tracked_run(cfg, experiment="never") as tr:
        assert tr.flush(timeout=10)
        tr.client.log_batch = unreachable
        for step in range(3):
            tr.log_metrics({"train_loss": 1.0, "lr": 0.1}, step)
        tr.set_tags({"late": "tag"})
        (cfg.output_dir / "metrics.json").write_text(json.dumps({"step": 3}))  # as the loop leaves it
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 1.0 + 5  # FINISH_WAIT_S, then one bounded attempt per call left
    assert tr.lost_metrics == 6
    assert "set_tags: not delivered (tracking server unreachable)" in tr.errors
    assert json.loads((cfg.output_dir / "metrics.json").read_text()) == {"step": 3, LOST_METRICS: 6}
    run = store.get_run(tr.run_id)
    assert run.info.status == "FINISHED" and "train_loss" not in run.data.metrics and "late" not in run.data.tags
    err = capsys.readouterr().err
    assert "still unreachable 1 s after the run ended: 6 metric values and 1 other calls (set_tags)" in err
