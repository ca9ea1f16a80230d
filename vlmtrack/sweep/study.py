"""The LR x vision_ln sweep (spec 4): an Optuna GridSampler study whose trials are nested MLflow runs.

Exactly once, with several workers on one RDB storage (PostgreSQL), comes from the trial queue, not
from GridSampler (whose docs warn it may suggest a configuration twice with several workers): every
grid point is enqueued as a WAITING trial, and RDB storage hands a waiting trial to one worker only
(its WAITING -> RUNNING update is atomic). What must happen once per study (claiming the MLflow parent
run, queueing the grid, failing and re-queueing a dead worker's trial, the summary) happens under the
study lock (study_lock), so two workers started together queue the grid once. Should a point still be
queued twice (a storage with no lock), the lowest-numbered live trial of a point is the one that
trains; the others stand down. A worker that dies leaves a RUNNING trial whose heartbeat goes stale:
the next worker fails it, re-queues its point ahead of the rest and ends the dead trial's MLflow run. A
re-run re-queues every point that has no complete, running or waiting trial, so failed points are
retried explicitly and finished ones never run again.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import itertools
import json
import os
import random
import threading
import time
import warnings
from pathlib import Path

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import FrozenTrial, TrialState

from vlmtrack.config import SWEEP_AXES, Config, set_axes
from vlmtrack.data.llava import DataError
from vlmtrack.files import file_lock

# The heartbeat and stale-trial retry below are Optuna features vlmtrack relies on by design; their
# ExperimentalWarnings, and the note that heartbeats are meant for Study.optimize (we ask and tell, with a
# heartbeat thread of our own), printed on every worker and read like failures.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")

STOOD_DOWN = "stood_down"  # user attr of a trial that did not train: its point belongs to another trial
PARENT_RUN = "mlflow_parent_run_id"  # study user attr: the one MLflow parent run all workers nest under
SUMMARY_BY = "summary_written_by"  # study user attr: the worker that wrote the summary (once per study)
WORKER = "worker"  # trial user attr: the worker (host:pid) training it
MAX_RETRIES = 2  # times a dead worker's point is re-queued


def grid(cfg: Config) -> dict[str, list]:
    return {axis.name: axis.values(cfg) for axis in SWEEP_AXES}


def grid_points(cfg: Config) -> list[dict]:
    """Every grid point, the last axis varying fastest."""
    values = [[axis.type(v) for v in axis.values(cfg)] for axis in SWEEP_AXES]
    return [{axis.name: v for axis, v in zip(SWEEP_AXES, point)} for point in itertools.product(*values)]


def sweep_dir(cfg: Config) -> Path:
    return Path(cfg.sweep.output_dir or f"outputs/{cfg.sweep.study_name}")


def storage_url(cfg: Config) -> str:
    return cfg.sweep.storage or f"sqlite:///{(sweep_dir(cfg) / 'optuna.db').resolve()}"


class StaleTrials:
    """The storage's stale-trial callback: re-queues a dead worker's point (Optuna's
    RetryHeartbeatStaleTrialCallback) and keeps the trial, so that the worker that found it ends its
    MLflow run (see fail_stale)."""

    def __init__(self, max_retry: int = MAX_RETRIES):
        self.retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
        self.found: list[FrozenTrial] = []

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.retry(study, trial)
        self.found.append(trial)


def open_study(cfg: Config, attempts: int = 5) -> optuna.Study:
    """Creates or loads the study. Workers started together race to create Optuna's schema in a fresh
    database; the loser's error is transient, so it retries."""
    from sqlalchemy.exc import SQLAlchemyError

    sweep_dir(cfg).mkdir(parents=True, exist_ok=True)
    beat = cfg.sweep.heartbeat_s
    for attempt in range(attempts):
        try:
            storage = RDBStorage(storage_url(cfg), heartbeat_interval=beat, grace_period=4 * beat,
                                 heartbeat_stale_trial_callback=StaleTrials())
            sampler = optuna.samplers.GridSampler(grid(cfg), seed=cfg.train.seed)
            return optuna.create_study(study_name=cfg.sweep.study_name, storage=storage, sampler=sampler,
                                       direction="minimize", load_if_exists=True)
        except (SQLAlchemyError, optuna.exceptions.DuplicatedStudyError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 + random.random())


def fail_stale(study: optuna.Study) -> list[FrozenTrial]:
    """Fails the trials of dead workers (stale heartbeat), re-queues their points, and returns the
    trials this call failed (each is failed by one worker only), for their MLflow runs to be ended."""
    found = study._storage.get_heartbeat_stale_trial_callback()
    fail_stale_trials(study)
    out, found.found = found.found, []
    return out


@functools.lru_cache(maxsize=None)
def _lock_engine(url: str):
    import sqlalchemy

    return sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)


@contextlib.contextmanager
def study_lock(cfg: Config):
    """Serialises what must happen once per study across its workers. Optuna has no compare-and-set on a
    study, so the lock is the database's: a PostgreSQL advisory lock (the server drops it with the
    connection of a worker that dies), or a file lock beside a SQLite storage (one host). Another
    database gets none; the stand-down check in pop_trials still keeps each point trained once."""
    url = storage_url(cfg)
    if url.startswith("sqlite:///") and ":memory:" not in url:
        with file_lock(Path(url[len("sqlite:///"):].split("?", 1)[0] + ".lock")):
            yield
        return
    if not url.startswith("postgresql"):
        yield
        return
    import sqlalchemy

    digest = hashlib.sha256(f"vlmtrack study {cfg.sweep.study_name}".encode()).digest()
    key = int.from_bytes(digest[:8], "big", signed=True)
    with _lock_engine(url).connect() as conn:
        conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            conn.commit()


def pin_hashes(study: optuna.Study, split_hash: str, golden_hash: str) -> None:
    """The first worker records the eval split and golden set; a worker whose data differs is refused."""
    attrs = study.user_attrs
    if "split_hash" not in attrs:
        study.set_user_attr("split_hash", split_hash)
        study.set_user_attr("golden_hash", golden_hash)
        return
    if (attrs["split_hash"], attrs["golden_hash"]) != (split_hash, golden_hash):
        raise DataError(
            f"study '{study.study_name}' was run on eval split {attrs['split_hash']} / golden set "
            f"{attrs['golden_hash']}, this worker has {split_hash} / {golden_hash}: its trials would not be "
            "comparable. Use the same data, tokenizer and split settings, or a new sweep.study_name"
        )


def point_key(params: dict) -> str:
    return json.dumps({axis.name: axis.type(params[axis.name]) for axis in SWEEP_AXES}, sort_keys=True)


def _point(t) -> str | None:
    fixed = t.system_attrs.get("fixed_params") or t.params
    return point_key(fixed) if fixed else None


def enqueue_missing(study: optuna.Study, cfg: Config) -> int:
    """Queues every grid point that has no complete, running or waiting trial; returns how many."""
    live = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
    held = {_point(t) for t in study.get_trials(deepcopy=False, states=live) if STOOD_DOWN not in t.user_attrs}
    missing = [p for p in grid_points(cfg) if point_key(p) not in held]
    for p in missing:
        study.enqueue_trial(p)
    return len(missing)


def stands_down(study: optuna.Study, trial: optuna.Trial) -> bool:
    """Another trial owns this point: one complete, or a lower-numbered one running or waiting."""
    mine = point_key(trial.params)
    for t in study.get_trials(deepcopy=False):
        if t.number == trial.number or _point(t) != mine or STOOD_DOWN in t.user_attrs:
            continue
        if t.state == TrialState.COMPLETE or (
                t.state in (TrialState.RUNNING, TrialState.WAITING) and t.number < trial.number):
            return True
    return False


def tell(study: optuna.Study, trial: optuna.Trial, value: float | None = None, failed: bool = False) -> None:
    """study.tell outside optimize(): GridSampler calls study.stop() when the grid is covered, which
    raises outside optimize() after the trial's state has been stored; that stop means nothing here."""
    try:
        if failed:
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, value)
    except RuntimeError as e:
        if "Study.stop" not in str(e):
            raise


def pop_waiting(study: optuna.Study) -> optuna.Trial | None:
    """Takes one queued trial, a dead worker's re-queued point first, then the lowest number. Study.ask
    takes the lowest number only, so a retried point waited behind the rest of the queue; the take itself
    is the same compare-and-set (WAITING -> RUNNING) as in Study.ask."""
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    for t in sorted(waiting, key=lambda t: ("failed_trial" not in t.system_attrs, t.number)):
        try:
            if study._storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                return optuna.Trial(study, t._trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


def pop_trials(study: optuna.Study, cfg: Config, k: int) -> list[optuna.Trial]:
    """Up to k queued trials for this worker (and none that another trial owns)."""
    out = []
    while len(out) < k:
        trial = pop_waiting(study)
        if trial is None:
            break
        trial.set_user_attr(WORKER, worker_name())
        for axis in SWEEP_AXES:
            trial.suggest_categorical(axis.name, axis.values(cfg))
        if stands_down(study, trial):
            trial.set_user_attr(STOOD_DOWN, "another trial owns this grid point")
            tell(study, trial, failed=True)
            continue
        out.append(trial)
    return out


def others_running(study: optuna.Study) -> bool:
    """Another worker has a trial running (a dead worker's counts until its heartbeat goes stale)."""
    me = worker_name()
    return any(t.user_attrs.get(WORKER) != me
               for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def grid_complete(study: optuna.Study, cfg: Config) -> bool:
    done = {point_key(t.params) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    return all(point_key(p) in done for p in grid_points(cfg))


@contextlib.contextmanager
def heartbeats(study: optuna.Study, trials: list[optuna.Trial], every: float):
    """Heartbeats for our trials while they train, so a worker that dies leaves them stale."""
    storage = study._storage
    stop = threading.Event()

    def beat():
        while not stop.is_set():
            for t in trials:
                try:
                    storage.record_heartbeat(t._trial_id)
                except Exception:  # noqa: BLE001 - a missed beat only delays stale detection
                    pass
            stop.wait(every)

    thread = threading.Thread(target=beat, daemon=True, name="optuna-heartbeats")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def trial_config(cfg: Config, trial: optuna.Trial) -> Config:
    """The base config with this grid point, its own run name and its own output directory."""
    tc = copy.deepcopy(cfg)
    name = f"trial{trial.number:03d}_" + "_".join(axis.run_tag(trial.params[axis.name]) for axis in SWEEP_AXES)
    set_axes(tc, trial.params)
    tc.train.run_name = name
    tc.train.output_dir = str(sweep_dir(cfg) / name)
    tc.train.resume_from = ""
    return tc


def worker_name() -> str:
    return f"{os.uname().nodename}:{os.getpid()}"
