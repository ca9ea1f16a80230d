"""A tracked run from start to end: the MLflow run is created (or attached to), the resolved config
and provenance logged, and the run always ends with a status: FINISHED, FAILED with the error, or
KILLED on Ctrl-C. Checkpoints already written stay where they are."""
from __future__ import annotations

import contextlib
import json
import subprocess
from pathlib import Path

import torch

from vlmtrack.config import Config
from vlmtrack.files import write_json
from vlmtrack.tracking.base import finishing
from vlmtrack.tracking.figures import ablation_bars, eval_loss_by_bucket
from vlmtrack.tracking.mlflow_tracker import MlflowTracker


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


@contextlib.contextmanager
def tracked_run(cfg: Config, config_file: str | None = None, training: bool = True, **tracker_kw):
    """`training` runs record their attempt in the output dir (see record_attempt)."""
    tracker = MlflowTracker(run_name=cfg.train.run_name, **tracker_kw)
    if training:
        record_attempt(cfg, tracker)
    tracker.set_tags({"git_commit": git_commit(), "cuda": torch.cuda.is_available(),
                      "output_dir": str(cfg.output_dir.resolve())})
    if config_file:
        tracker.log_artifact(Path(config_file), "config")
    with finishing(tracker):
        yield tracker
    if training:
        note_tracking_losses(cfg.output_dir / "metrics.json", tracker)


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
