"""The MLflow tracker: the only place vlmtrack calls MLflow for a run.

Every call is queued to one background thread, so logging never blocks a training step and keeps
its order; metrics are batched; a tracking hiccup is reported once and never kills the run.
"""
from __future__ import annotations

import os
import posixpath
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path

DEFAULT_EXPERIMENT = "vlmtrack"
METRIC_FLUSH_S = 5.0
METRIC_BATCH = 900  # log_batch takes at most 1,000 metrics


class MlflowTracker:
    def __init__(self, run_id: str | None = None, experiment: str | None = None, run_name: str | None = None,
                 parent_run_id: str | None = None, tags: dict | None = None, tracking_uri: str | None = None,
                 experiment_id: str | None = None):
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri)
        run_id = run_id or os.environ.get("MLFLOW_RUN_ID")
        if run_id:  # `mlflow run` created the run and passes it on: attach to it
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
        else:
            exp_id = experiment_id or self._experiment_id(experiment)
            run_tags = dict(tags or {})
            if parent_run_id:
                run_tags["mlflow.parentRunId"] = parent_run_id
            self.run_id = self.client.create_run(exp_id, run_name=run_name, tags=run_tags).info.run_id
        self.errors: list[str] = []
        self.finished = False
        self._metrics: list = []
        self._last_flush = time.monotonic()
        self._images_logged: set[str] = set()
        self._queue: queue.Queue = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="mlflow-tracker", daemon=True)
        self._worker.start()
        self.cost_s = 0.0  # time the worker spent in MLflow calls

    def _experiment_id(self, experiment: str | None) -> str:
        name = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
        exp = self.client.get_experiment_by_name(name)
        return exp.experiment_id if exp else self.client.create_experiment(name)

    @property
    def experiment_id(self) -> str:
        return self.client.get_run(self.run_id).info.experiment_id

    # -- the background worker -------------------------------------------------------------
    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                self._queue.task_done()
                return
            what, fn = item
            t0 = time.perf_counter()
            try:
                fn()
            except Exception as e:  # a tracking hiccup must not kill a long run
                msg = f"{what}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                self.errors.append(msg)
                if len(self.errors) <= 5:
                    print(f"[mlflow] warning: {msg} (training goes on)", file=sys.stderr)
            finally:
                self.cost_s += time.perf_counter() - t0
                self._queue.task_done()

    def _submit(self, what: str, fn) -> None:
        self._queue.put((what, fn))

    def flush(self) -> None:
        self._flush_metrics()
        self._queue.join()

    # -- the Tracker interface ---------------------------------------------------------------
    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            chunk = items[i:i + 100]
            self._submit("log_params", lambda c=chunk: self.client.log_batch(self.run_id, params=c))

    def set_tags(self, tags: dict) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)[:5000]) for k, v in tags.items()]
        self._submit("set_tags", lambda: self.client.log_batch(self.run_id, tags=items))

    def log_metrics(self, metrics: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._metrics += [Metric(k, float(v), now, int(step)) for k, v in metrics.items()]
        if len(self._metrics) >= METRIC_BATCH or time.monotonic() - self._last_flush > METRIC_FLUSH_S:
            self._flush_metrics()

    def _flush_metrics(self) -> None:
        batch, self._metrics = self._metrics, []
        self._last_flush = time.monotonic()
        for i in range(0, len(batch), METRIC_BATCH):
            chunk = batch[i:i + METRIC_BATCH]
            self._submit("log_metrics", lambda c=chunk: self.client.log_batch(self.run_id, metrics=c))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            dest = posixpath.join(artifact_path, path.name) if artifact_path else path.name
            self._submit("log_artifacts", lambda: self.client.log_artifacts(self.run_id, str(path), dest))
        else:
            self._submit("log_artifact", lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))

    def log_figure(self, figure, artifact_file: str) -> None:
        def log():
            import matplotlib.pyplot as plt

            self.client.log_figure(self.run_id, figure, artifact_file)
            plt.close(figure)
        self._submit("log_figure", log)

    def log_table(self, rows: list[dict], artifact_file: str, image_root: Path | None = None,
                  image_column: str | None = None) -> None:
        """An MLflow table (`mlflow ui`: Artifacts -> the file -> table view). With `image_column`, the
        images are uploaded once per run under `golden/images/` and every later table points at them,
        instead of MLflow storing the same bytes again at every checkpoint."""
        rows = [dict(r) for r in rows]
        self._submit("log_table", lambda: self._log_table(rows, artifact_file, image_root, image_column))

    def _log_table(self, rows, artifact_file, image_root, image_column) -> None:
        import pandas as pd

        if image_column:
            self._upload_images([r[image_column] for r in rows], image_root)
            for r in rows:
                stem = _image_stem(r[image_column])
                r["image"] = {"type": "image", "filepath": f"golden/images/{stem}.png",
                              "compressed_filepath": f"golden/images/{stem}.webp"}
            rows = [{"image": r.pop("image"), **r} for r in rows]
        self.client.log_table(self.run_id, pd.DataFrame(rows), artifact_file)

    def _upload_images(self, relpaths: list[str], image_root: Path) -> None:
        from mlflow.tracking.multimedia import compress_image_size

        from vlmtrack.data.dataset import load_image

        todo = [p for p in relpaths if p not in self._images_logged]
        if not todo:
            return
        with tempfile.TemporaryDirectory() as tmp:
            for rel in todo:
                image = load_image(image_root, rel)
                stem = _image_stem(rel)
                image.save(Path(tmp) / f"{stem}.png")
                compress_image_size(image).save(Path(tmp) / f"{stem}.webp")
            self.client.log_artifacts(self.run_id, tmp, "golden/images")
        self._images_logged.update(todo)

    def link_resumed(self, previous_run_id: str) -> None:
        """This run continues `previous_run_id` (its process was killed: a SIGKILLed process cannot
        mark itself): mark it KILLED if it still says RUNNING, and tag both runs with each other."""
        from mlflow.entities import RunTag

        try:
            previous = self.client.get_run(previous_run_id)
        except Exception as e:  # noqa: BLE001 - another store, or deleted: resume anyway
            print(f"[mlflow] warning: cannot find the resumed run {previous_run_id}: {e}", file=sys.stderr)
            return
        if previous.info.status == "RUNNING":
            self.client.set_terminated(previous_run_id, "KILLED")
        self.client.log_batch(previous_run_id, tags=[RunTag("resumed_by_run_id", self.run_id)])
        self.client.log_batch(self.run_id, tags=[RunTag("resumed_from_run_id", previous_run_id)])

    def finish(self, status: str = "FINISHED", error: str | None = None) -> None:
        from mlflow.entities import RunTag

        if self.finished:  # the first status wins (e.g. FAILED set by the loop before it raised)
            return
        self.finished = True
        if error:
            self._submit("error tag", lambda: self.client.log_batch(
                self.run_id, tags=[RunTag("error", error[:5000])]))
        self.flush()
        self._queue.put(None)
        self._worker.join(timeout=60)
        try:
            self.client.set_terminated(self.run_id, status)
        except Exception as e:
            print(f"[mlflow] warning: could not mark run {self.run_id} {status}: {e}", file=sys.stderr)


def _image_stem(relpath: str) -> str:
    return relpath.replace("/", "__").rsplit(".", 1)[0]
