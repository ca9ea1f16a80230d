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
        sweep_run.run_sweep(cfg, JsonlTracker(), lambda *a: JsonlTracker(), tok, log=lambda *_: None)
    first = S.open_study(cfg)
    assert len(completed_points(first)) == 2
    time.sleep(4 * cfg.sweep.heartbeat_s + 0.5)  # the dead trial's heartbeat goes stale
    trained.clear()
    monkeypatch.setattr(sweep_run, "train_trials", lambda trials, log=print, **kw: trained.extend(
        tr.cfg.train.run_name for tr in trials) or real(trials, log, **kw))
    study = sweep_run.run_sweep(cfg, JsonlTracker(), lambda *a: JsonlTracker(), tok, log=lambda *_: None)
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


def worker(cfg_path, tmp_path, storage, name):
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow-{name}.db")
    env.pop("MLFLOW_RUN_ID", None)
    return subprocess.Popen([sys.executable, "-m", "vlmtrack.cli", "sweep", "--config", str(cfg_path),
                             f"sweep.storage={storage}"], env=env, stdout=open(tmp_path / f"{name}.log", "w"),
                            stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_two_workers_on_postgres_train_each_point_exactly_once(tiny_paths, tmp_path):
    import optuna

    with postgres_cluster() as (url, port):
        for round_ in range(3):  # several times: exactly-once must not be luck
            db = f"sweep{round_}"
            create_database(port, db)
            cfg = six_point_cfg(tiny_paths, tmp_path / db, study_name=db)
            dump_yaml(cfg, tmp_path / f"{db}.yaml")
            storage = url.format(db=db)
            procs = [worker(tmp_path / f"{db}.yaml", tmp_path, storage, f"{db}-{w}") for w in range(2)]
            assert [p.wait(timeout=600) for p in procs] == [0, 0], (tmp_path / f"{db}-0.log").read_text()[-2000:]
            study = optuna.load_study(study_name=db, storage=storage)
            points = completed_points(study)
            assert sorted(points) == sorted(S.point_key(p) for p in S.grid_points(cfg)), round_
            trained_dirs = list((tmp_path / db / "sweep").glob("trial*/metrics.json"))
            assert len(trained_dirs) == 6  # nothing trained twice, not even a stood-down duplicate
            runs = [t.user_attrs["mlflow_run_id"] for t in study.get_trials(states=(TrialState.COMPLETE,))]
            assert len(set(runs)) == 6


@pytest.mark.slow
def test_worker_killed_mid_trial_is_retried_by_the_other(tiny_paths, tmp_path):
    import optuna

    with postgres_cluster() as (url, port):
        create_database(port, "killed")
        cfg = six_point_cfg(tiny_paths, tmp_path, study_name="killed")
        cfg.train.train_steps = 40  # long enough to be killed inside a trial
        dump_yaml(cfg, tmp_path / "killed.yaml")
        storage = url.format(db="killed")
        a = worker(tmp_path / "killed.yaml", tmp_path, storage, "a")
        deadline = time.time() + 300
        while not list((tmp_path / "sweep").glob("trial*/checkpoints")) and time.time() < deadline:
            time.sleep(0.1)
        a.send_signal(signal.SIGKILL)
        a.wait()
        b = worker(tmp_path / "killed.yaml", tmp_path, storage, "b")
        assert b.wait(timeout=600) == 0, (tmp_path / "b.log").read_text()[-2000:]
        study = optuna.load_study(study_name="killed", storage=storage)
        points = completed_points(study)
        assert sorted(points) == sorted(S.point_key(p) for p in S.grid_points(cfg))
        failed = study.get_trials(states=(TrialState.FAIL,))
        assert any(S.STOOD_DOWN not in t.user_attrs for t in failed)  # the dead worker's trial, failed as stale
        retried = [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if "failed_trial" in t.system_attrs]
        assert len(retried) == 1
