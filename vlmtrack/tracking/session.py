"""A tracked run from start to end: the MLflow run is created (or attached to), the resolved config
and provenance logged, and the run always ends with a status: FINISHED, FAILED with the error, or
KILLED on Ctrl-C. Checkpoints already written stay where they are."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
from pathlib import Path

import torch

from vlmtrack.config import Config
from vlmtrack.files import write_json
from vlmtrack.tracking.base import finishing
from vlmtrack.tracking.figures import ablation_bars, eval_loss_by_bucket
from vlmtrack.tracking.mlflow_tracker import MlflowTracker, open_client


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


ATTEMPTS_FILE = "mlflow_runs.json"  # in the output dir: the MLflow run of every attempt, oldest first


def record_attempt(cfg: Config, tracker: MlflowTracker) -> None:
    """Remembers this attempt's run in the output dir; a resumed attempt links itself to the last one."""
    path = cfg.output_dir / ATTEMPTS_FILE
    attempts = json.loads(path.read_text()) if path.exists() else []
    if cfg.train.resume_from and attempts:
        tracker.link_resumed(attempts[-1]["run_id"])
    attempts.append({"run_id": tracker.run_id, "resume_from": cfg.train.resume_from})
    write_json(path, attempts)


def open_run(cfg: Config, config_file: str | None = None, training: bool = True, **tracker_kw) -> MlflowTracker:
    """The run, created or attached to, with its provenance; `training` runs record their attempt in
    the output dir (see record_attempt)."""
    tracker = MlflowTracker(run_name=cfg.train.run_name, **tracker_kw)
    if training:
        record_attempt(cfg, tracker)
    tracker.set_tags({"git_commit": git_commit(), "cuda": torch.cuda.is_available(),
                      "output_dir": str(cfg.output_dir.resolve())})
    if config_file:
        tracker.log_artifact(Path(config_file), "config")
    return tracker


@contextlib.contextmanager
def tracked_run(cfg: Config, config_file: str | None = None, training: bool = True, **tracker_kw):
    tracker = open_run(cfg, config_file, training, **tracker_kw)
    with finishing(tracker):
        yield tracker
    if training:
        note_tracking_losses(cfg.output_dir / "metrics.json", tracker)


class SweepStoreError(RuntimeError):
    """The study's parent run is not in this worker's tracking store."""


def sweep_parent(cfg: Config, config_file: str | None = None, experiment: str | None = None):
    """How a sweep worker opens its study's one parent run: `open_parent(None)` creates it (the study's
    first worker; under `mlflow run`, the run mlflow made), `open_parent(run_id)` attaches to it. A run
    `mlflow run` made for a later worker is left empty, tagged with the parent its trials went under."""
    def open_parent(run_id: str | None) -> MlflowTracker:
        if run_id is None:
            return open_run(cfg, config_file, training=False, experiment=experiment)
        client = open_client()
        try:
            client.get_run(run_id)
        except Exception as e:  # noqa: BLE001 - MLflow's "not found" is one of several exception types
            raise SweepStoreError(
                f"study '{cfg.sweep.study_name}' has its MLflow parent run {run_id} in another tracking store "
                f"than this worker's ({client.tracking_uri}): {type(e).__name__}. Every worker of a study logs "
                "to one store: set the same MLFLOW_TRACKING_URI (on several hosts, a tracking server)") from None
        own = os.environ.get("MLFLOW_RUN_ID")
        if own and own != run_id:
            client.set_tag(own, "sweep_parent_run_id", run_id)
        return open_run(cfg, config_file, training=False, run_id=run_id)
    return open_parent


def note_tracking_losses(path: Path, tracker) -> None:
    """The loop writes metrics.json before the tracker's last delivery, so what tracking lost (metric
    values that never reached the server) is known only now: added to the local file."""
    lost = getattr(tracker, "lost_metrics", 0)
    if not lost or not path.exists():
        return
    doc = json.loads(path.read_text())
    doc["tracking_lost_metrics"] = lost
    write_json(path, doc)


def log_summary(tracker, cfg: Config, metrics: dict) -> None:
    """The resolved config and the summary figures, once training returns."""
    tracker.log_artifact(cfg.output_dir / "config.yaml", "config")
    if metrics.get("evals"):
        tracker.log_figure(eval_loss_by_bucket(metrics["evals"], cfg.data.bucket_names), "plots/eval_loss_by_bucket.png")
    if metrics.get("ablations"):
        tracker.log_figure(ablation_bars(metrics["ablations"]), "plots/ablations.png")
