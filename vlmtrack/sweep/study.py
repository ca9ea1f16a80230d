"""The LR x vision_ln sweep (spec 4): an Optuna GridSampler study whose trials are nested MLflow runs.

Several workers may share one Optuna storage (PostgreSQL): each asks the study for grid points that
no one has taken, so every point runs once; a trial whose process died (no heartbeat) is marked
failed and its grid point retried. The objective is the composite score, minimised.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import threading
from pathlib import Path

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import TrialState

from vlmtrack.config import Config
from vlmtrack.data.llava import DataError

HEARTBEAT_S = 30


def grid(cfg: Config) -> dict[str, list]:
    return {"lr": list(cfg.sweep.lr), "vision_ln": list(cfg.sweep.vision_ln)}


def sweep_dir(cfg: Config) -> Path:
    return Path(cfg.sweep.output_dir or f"outputs/{cfg.sweep.study_name}")


def storage_url(cfg: Config) -> str:
    return cfg.sweep.storage or f"sqlite:///{(sweep_dir(cfg) / 'optuna.db').resolve()}"


def open_study(cfg: Config) -> optuna.Study:
    sweep_dir(cfg).mkdir(parents=True, exist_ok=True)
    storage = RDBStorage(storage_url(cfg), heartbeat_interval=HEARTBEAT_S, grace_period=4 * HEARTBEAT_S,
                         heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2))
    sampler = optuna.samplers.GridSampler(grid(cfg), seed=cfg.train.seed)
    return optuna.create_study(study_name=cfg.sweep.study_name, storage=storage, sampler=sampler,
                               direction="minimize", load_if_exists=True)


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
    return json.dumps({"lr": float(params["lr"]), "vision_ln": bool(params["vision_ln"])}, sort_keys=True)


def grid_size(cfg: Config) -> int:
    return len(cfg.sweep.lr) * len(cfg.sweep.vision_ln)


def claimed_points(study: optuna.Study, except_number: int | None = None) -> set[str]:
    """Grid points done, running, or failed for a reason of their own: not as a duplicate, and not as
    a dead worker's trial that has been queued again."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.system_attrs.get("failed_trial") for t in trials}
    out = set()
    for t in trials:
        if t.number == except_number or not t.params:
            continue
        if t.state in (TrialState.COMPLETE, TrialState.RUNNING) or (
                t.state == TrialState.FAIL and "duplicate_of_grid_point" not in t.user_attrs
                and t.number not in retried):
            out.add(point_key(t.params))
    return out


def work_left(study: optuna.Study, cfg: Config) -> bool:
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))  # e.g. retries of dead trials
    return bool(waiting) or len(claimed_points(study)) < grid_size(cfg)


def suggest_point(trial: optuna.Trial, cfg: Config) -> dict:
    return {"lr": trial.suggest_categorical("lr", list(cfg.sweep.lr)),
            "vision_ln": trial.suggest_categorical("vision_ln", list(cfg.sweep.vision_ln))}


def is_duplicate(study: optuna.Study, trial: optuna.Trial) -> bool:
    """Another trial already holds this point (workers raced for the last free one)."""
    if point_key(trial.params) in claimed_points(study, except_number=trial.number):
        trial.set_user_attr("duplicate_of_grid_point", point_key(trial.params))
        return True
    return False


def ask_more(study: optuna.Study, cfg: Config, k: int) -> list[optuna.Trial]:
    """Up to k further trials on free grid points, for a group trained side by side."""
    out = []
    while len(out) < k and work_left(study, cfg):
        trial = study.ask()
        suggest_point(trial, cfg)
        if is_duplicate(study, trial):
            study.tell(trial, state=TrialState.FAIL)
            continue
        out.append(trial)
    return out


@contextlib.contextmanager
def heartbeats(study: optuna.Study, trials: list[optuna.Trial]):
    """Heartbeats for trials asked outside `optimize`'s own (side-by-side extras), so a worker that dies
    leaves them stale, to be failed and retried by the next worker."""
    storage = study._storage
    stop = threading.Event()

    def beat():
        while not stop.is_set():
            for t in trials:
                try:
                    storage.record_heartbeat(t._trial_id)
                except Exception:  # noqa: BLE001 - a missed beat only delays stale detection
                    pass
            stop.wait(HEARTBEAT_S)

    thread = threading.Thread(target=beat, daemon=True, name="optuna-heartbeats")
    if trials and is_heartbeat_enabled(storage):
        thread.start()
    try:
        yield
    finally:
        stop.set()


def trial_config(cfg: Config, trial: optuna.Trial) -> Config:
    """The base config with this grid point, its own run name and its own output directory."""
    tc = copy.deepcopy(cfg)
    lr, ln = trial.params["lr"], trial.params["vision_ln"]
    name = f"trial{trial.number:03d}_lr{lr:g}_ln{int(ln)}"
    tc.train.lr, tc.model.vision_ln = float(lr), bool(ln)
    tc.train.run_name = name
    tc.train.output_dir = str(sweep_dir(cfg) / name)
    tc.train.resume_from = ""
    return tc


def worker_name() -> str:
    return f"{os.uname().nodename}:{os.getpid()}"
