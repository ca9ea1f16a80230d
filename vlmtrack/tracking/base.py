"""The tracker interface the loop and eval talk to. MLflow lives behind it (tracking/mlflow_tracker.py);
`JsonlTracker` keeps everything in memory and in a JSON-lines file, for tests and server-less runs."""
from __future__ import annotations

import contextlib
import json
import shutil
import time
import traceback
from pathlib import Path
from dataclasses import asdict
from typing import Protocol

from vlmtrack.data.pipeline import DatasetRecord
from vlmtrack.model.connector_io import checkpoint_name


class Tracker(Protocol):
    run_id: str | None

    def log_params(self, params: dict) -> None: ...
    def set_tags(self, tags: dict) -> None: ...
    def log_metrics(self, metrics: dict, step: int) -> None: ...
    def log_table(self, rows: list[dict], artifact_file: str, image_root: Path | None = None,
                  image_column: str | None = None) -> None: ...
    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...
    def log_figure(self, figure, artifact_file: str) -> None: ...
    def end_run(self, run_id: str, status: str, error: str) -> None: ...
    def log_checkpoint(self, step: int, files: list[Path], metrics: dict) -> None: ...
    def delete_checkpoint(self, step: int, run_id: str | None = None) -> None: ...
    def log_datasets(self, datasets: list[DatasetRecord]) -> None: ...
    def monitor_system(self) -> None: ...
    def finish(self, status: str = "FINISHED", error: str | None = None) -> None: ...


@contextlib.contextmanager
def finishing(tracker: Tracker):
    """The run the block works for always ends with a status: FINISHED, FAILED with the error, or KILLED
    on Ctrl-C (a status set earlier, e.g. by a sweep for a failed trial, is the one kept)."""
    try:
        yield tracker
    except KeyboardInterrupt:
        tracker.finish("KILLED", "interrupted (Ctrl-C)")
        raise
    except BaseException as e:
        tracker.finish("FAILED", f"{type(e).__name__}: {e}\n{traceback.format_exc()[-3000:]}")
        raise
    tracker.finish("FINISHED")


class JsonlTracker:
    """Every call recorded as an event (in `events`, and appended to `path` when given)."""

    def __init__(self, path: Path | None = None, artifact_dir: Path | None = None):
        self.run_id = None
        self.path, self.artifact_dir = path, artifact_dir
        self.events: list[dict] = []
        self.status: str | None = None

    def _emit(self, kind: str, **body) -> None:
        event = {"kind": kind, "time": time.time(), **body}
        self.events.append(event)
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(json.dumps(event, default=str) + "\n")

    def metrics(self, name: str) -> list[tuple[int, float]]:
        return [(e["step"], e["metrics"][name]) for e in self.events if e["kind"] == "metrics" and name in e["metrics"]]

    def log_params(self, params: dict) -> None:
        self._emit("params", params=params)

    def set_tags(self, tags: dict) -> None:
        self._emit("tags", tags=tags)

    def log_metrics(self, metrics: dict, step: int) -> None:
        self._emit("metrics", metrics={k: float(v) for k, v in metrics.items()}, step=step)

    def log_table(self, rows, artifact_file, image_root=None, image_column=None) -> None:
        self._emit("table", artifact_file=artifact_file, rows=len(rows), columns=sorted(rows[0]) if rows else [])

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if self.artifact_dir:
            dest = self.artifact_dir / (artifact_path or "")
            dest.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if Path(path).is_dir() else shutil.copy2)(path, dest / Path(path).name)
        self._emit("artifact", path=str(path), artifact_path=artifact_path)

    def log_figure(self, figure, artifact_file: str) -> None:
        self._emit("figure", artifact_file=artifact_file)

    def log_checkpoint(self, step: int, files: list[Path], metrics: dict) -> None:
        if self.artifact_dir:
            dest = self.artifact_dir / checkpoint_name(step)
            dest.mkdir(parents=True, exist_ok=True)
            for f in files:
                shutil.copy2(f, dest / Path(f).name)
        self._emit("checkpoint", step=step, files=[Path(f).name for f in files], metrics=metrics)

    def delete_checkpoint(self, step: int, run_id: str | None = None) -> None:
        if self.artifact_dir and run_id in (None, self.run_id):
            shutil.rmtree(self.artifact_dir / checkpoint_name(step), ignore_errors=True)
        self._emit("delete_checkpoint", step=step, run_id=run_id)

    def log_datasets(self, datasets: list[DatasetRecord]) -> None:
        self._emit("datasets", datasets=[asdict(d) for d in datasets])

    def monitor_system(self) -> None:
        self._emit("monitor_system")

    def end_run(self, run_id: str, status: str, error: str) -> None:
        self._emit("end_run", run_id=run_id, status=status, error=error)

    def finish(self, status: str = "FINISHED", error: str | None = None) -> None:
        if self.status:  # the first status wins
            return
        self.status = status
        self._emit("finish", status=status, error=error)


class NullTracker:
    """What the ranks other than 0 log to under torchrun: nothing (rank 0 holds the one MLflow run)."""
    run_id = None
    experiment_id = None

    def log_params(self, params): pass
    def set_tags(self, tags): pass
    def log_metrics(self, metrics, step): pass
    def log_table(self, rows, artifact_file, image_root=None, image_column=None): pass
    def log_artifact(self, path, artifact_path=None): pass
    def log_figure(self, figure, artifact_file): pass
    def end_run(self, run_id, status, error): pass
    def log_checkpoint(self, step, files, metrics): pass
    def delete_checkpoint(self, step, run_id=None): pass
    def log_datasets(self, datasets): pass
    def monitor_system(self): pass
    def finish(self, status="FINISHED", error=None): pass
