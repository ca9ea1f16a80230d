"""Exactly once, resumable, shared: an interrupted sweep re-run trains only what is missing; two worker
processes on a real PostgreSQL storage finish the six points with no duplicate, every time; a worker
killed mid-trial leaves a trial that the other retries; a bad search space fails before training."""
import os
import signal
import subprocess
import sys
import time

import pytest
from optuna.trial import TrialState

from tests.helpers.postgres import create_database, postgres_cluster
from tests.helpers.tiny_models import tiny_config
from vlmtrack.config import ConfigError, dump_yaml, load_config
from vlmtrack.model.backbone import load_tokenizer
from vlmtrack.sweep import run as sweep_run
from vlmtrack.sweep import study as S
from vlmtrack.tracking.base import JsonlTracker


def six_point_cfg(tiny_paths, tmp_path, **sweep):
    cfg = tiny_config(tiny_paths, tmp_path / "unused", train_steps=4, save_every=4, quick_eval_steps=0,
                      run_golden_every="end")
    cfg.eval.ablation_samples = 8
    cfg.sweep.lr, cfg.sweep.vision_ln = [1e-3, 2e-3, 4e-3], [False, True]
    cfg.sweep.output_dir, cfg.sweep.study_name, cfg.sweep.heartbeat_s = str(tmp_path / "sweep"), "s", 0.5
    cfg.sweep.side_by_side = False
    for k, v in sweep.items():
        setattr(cfg.sweep, k, v)
    return cfg


def completed_points(study):
    return [S.point_key(t.params) for t in study.get_trials(states=(TrialState.COMPLETE,))]


def test_interrupted_sweep_rerun_trains_only_missing_points(tiny_paths, tmp_path, monkeypatch):
    cfg = six_point_cfg(tiny_paths, tmp_path)
    tok = load_tokenizer(cfg.model.llm)
    trained = []
    real = sweep_run.train_trials

    def interrupt_third(trials, log=print, **kw):
        trained.extend(tr.cfg.train.run_name for tr in trials)
        if len(trained) == 3:
            raise KeyboardInterrupt  # the worker dies inside its third trial
        return real(trials, log, **kw)

    monkeypatch.setattr(sweep_run, "train_trials", interrupt_third)
    with pytest.raises(KeyboardInterrupt):
        sweep_run.run_sweep(cfg, lambda run_id: JsonlTracker(), lambda *a: JsonlTracker(), tok, log=lambda *_: None)
    first = S.open_study(cfg)
    assert len(completed_points(first)) == 2
    time.sleep(4 * cfg.sweep.heartbeat_s + 0.5)  # the dead trial's heartbeat goes stale
    trained.clear()
    monkeypatch.setattr(sweep_run, "train_trials", lambda trials, log=print, **kw: trained.extend(
        tr.cfg.train.run_name for tr in trials) or real(trials, log, **kw))
    study = sweep_run.run_sweep(cfg, lambda run_id: JsonlTracker(), lambda *a: JsonlTracker(), tok, log=lambda *_: None)
    points = completed_points(study)
    assert len(points) == 6 and len(set(points)) == 6
    assert len(trained) == 4  # the interrupted point again, and the three never started


@pytest.mark.parametrize("override,needle", [("sweep.lr=[]", "sweep.lr must be a non-empty"),
                                             ("sweep.lr=[1e-4,-1e-4]", "distinct positive"),
                                             ("sweep.vision_ln=[]", "sweep.vision_ln must be"),
                                             ("sweep.lr=[1e-4,1e-4]", "distinct positive")])
def test_bad_search_space_fails_before_training(override, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config("configs/demo_sweep.yaml", [override])


def worker(cfg_path, tmp_path, storage, name, store):
    """A `vlmtrack sweep` process; the workers of a study share one MLflow store (`store`: a sqlite file)."""
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{store}")
    env.pop("MLFLOW_RUN_ID", None)
    return subprocess.Popen([sys.executable, "-m", "vlmtrack.cli", "sweep", "--config", str(cfg_path),
                             f"sweep.storage={storage}"], env=env, stdout=open(tmp_path / f"{name}.log", "w"),
                            stderr=subprocess.STDOUT)


def sweep_runs(store, study_name):
    """The study's MLflow runs: (parent runs, nested trial runs)."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{store}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              f"tags.optuna_study = '{study_name}'")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return parents, [r for r in runs if "mlflow.parentRunId" in r.data.tags], client


@pytest.mark.slow
def test_two_workers_on_postgres_train_each_point_exactly_once(tiny_paths, tmp_path):
    """Two workers started together on one study and one new MLflow store: each point queued and trained
    once (6 trials, no stood-down duplicates), one parent run holding all six and the summary, written once."""
    import optuna

    with postgres_cluster() as (url, port):
        for round_ in range(3):  # several times: exactly-once must not be luck
            db = f"sweep{round_}"
            create_database(port, db)
            cfg = six_point_cfg(tiny_paths, tmp_path / db, study_name=db)
            dump_yaml(cfg, tmp_path / f"{db}.yaml")
            storage, store = url.format(db=db), tmp_path / f"{db}-mlflow.db"
            procs = [worker(tmp_path / f"{db}.yaml", tmp_path, storage, f"{db}-{w}", store) for w in range(2)]
            assert [p.wait(timeout=600) for p in procs] == [0, 0], (tmp_path / f"{db}-0.log").read_text()[-2000:]
            study = optuna.load_study(study_name=db, storage=storage)
            points = completed_points(study)
            assert sorted(points) == sorted(S.point_key(p) for p in S.grid_points(cfg)), round_
            assert len(study.get_trials()) == 6, [(t.number, t.state, t.user_attrs) for t in study.get_trials()]
            trained_dirs = list((tmp_path / db / "sweep").glob("trial*/metrics.json"))
            assert len(trained_dirs) == 6  # nothing trained twice, not even a stood-down duplicate
            runs = [t.user_attrs["mlflow_run_id"] for t in study.get_trials(states=(TrialState.COMPLETE,))]
            assert len(set(runs)) == 6
            parents, children, client = sweep_runs(store, db)
            assert [p.info.run_id for p in parents] == [study.user_attrs[S.PARENT_RUN]], round_
            parent = parents[0]
            assert parent.info.status == "FINISHED" and "winner_run_id" in parent.data.tags
            assert sorted(c.info.run_id for c in children) == sorted(runs)
            assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
            assert {c.info.status for c in children} == {"FINISHED"}
            assert len(client.get_metric_history(parent.info.run_id, "best_score")) == 1  # the summary, once
            logs = "".join((tmp_path / f"{db}-{w}.log").read_text() for w in range(2))
            assert "[mlflow] warning" not in logs, logs[-3000:]


@pytest.mark.slow
def test_worker_killed_mid_trial_is_retried_first_and_its_run_ends_killed(tiny_paths, tmp_path):
    """A worker SIGKILLed inside a trial: the next worker fails the stale trial, marks its MLflow run KILLED,
    trains the re-queued point before the rest of the queue, and ends the study's one parent FINISHED."""
    import optuna

    with postgres_cluster() as (url, port):
        create_database(port, "killed")
        cfg = six_point_cfg(tiny_paths, tmp_path, study_name="killed")
        cfg.train.train_steps = 40  # long enough to be killed inside a trial
        dump_yaml(cfg, tmp_path / "killed.yaml")
        storage, store = url.format(db="killed"), tmp_path / "mlflow.db"
        a = worker(tmp_path / "killed.yaml", tmp_path, storage, "a", store)
        deadline = time.time() + 300
        while not list((tmp_path / "sweep").glob("trial*/checkpoints")) and time.time() < deadline:
            time.sleep(0.1)
        a.send_signal(signal.SIGKILL)
        a.wait()
        time.sleep(4 * cfg.sweep.heartbeat_s + 0.5)  # stale by the time the next worker looks
        b = worker(tmp_path / "killed.yaml", tmp_path, storage, "b", store)
        assert b.wait(timeout=600) == 0, (tmp_path / "b.log").read_text()[-2000:]
        study = optuna.load_study(study_name="killed", storage=storage)
        points = completed_points(study)
        assert sorted(points) == sorted(S.point_key(p) for p in S.grid_points(cfg))
        stale = [t for t in study.get_trials(states=(TrialState.FAIL,)) if S.STOOD_DOWN not in t.user_attrs]
        assert len(stale) == 1 and len(study.get_trials()) == 7  # six points, one retry
        complete = study.get_trials(states=(TrialState.COMPLETE,))
        retried = [t for t in complete if t.system_attrs.get("failed_trial") == stale[0].number]
        assert len(retried) == 1
        assert retried[0].datetime_start == min(t.datetime_start for t in complete)  # the retry went first
        parents, children, client = sweep_runs(store, "killed")
        dead = client.get_run(stale[0].user_attrs["mlflow_run_id"])
        assert dead.info.status == "KILLED" and "no heartbeat" in dead.data.tags["error"]
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        assert sorted(c.info.status for c in children) == ["FINISHED"] * 6 + ["KILLED"]
