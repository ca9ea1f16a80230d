"""The MLflow tracker: the only place vlmtrack calls MLflow for a run.

Every call is queued to one background thread, so logging never blocks a training step and keeps
its order; metrics are batched. A call that fails because the server cannot be reached is held and
retried until the server is back (metric values up to a bound; beyond it the oldest are dropped and
counted); any other failing call is reported and dropped. The run never dies for tracking.
"""
from __future__ import annotations

import contextlib
import json
import os
import posixpath
import queue
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

from vlmtrack.files import file_lock
from vlmtrack.data.pipeline import EVAL_CONTEXT, DatasetRecord
from vlmtrack.model.connector_io import checkpoint_name
from vlmtrack.tracking.artifacts import (delete_checkpoint_model, first_line, log_checkpoint_model,
                                        used_by_registered_versions)
from vlmtrack.tracking.system_metrics import sample_system

DEFAULT_EXPERIMENT = "vlmtrack"
METRIC_FLUSH_S = 5.0
METRIC_BATCH = 900  # log_batch takes at most 1,000 metrics
# While the server is away: metric values held for it (~40 MB; beyond, the oldest are dropped and
# counted as lost), the pause between attempts, and how long finish() waits for it to come back.
HOLD_METRICS = 200_000
RETRY_S = 2.0
FINISH_WAIT_S = 120.0
# MLflow retries a failed HTTP call 7 times with exponential backoff (minutes) before it raises, and
# waits 120 s for an answer. The worker retries on its own (above), so one call may give up after
# seconds; a value the user has set wins. The training thread never waits on these either way.
HTTP_BOUNDS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}
LOST_METRICS = "tracking_lost_metrics"  # metric and tag: values that never reached the server
FAILED_CALLS = "tracking_failed_calls"  # metric: tracking calls that failed for good
FAILED_CALLS_FILE = "tracking/failed_calls.json"  # artifact: each of them, what and why
EXPERIMENT_KIND, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"
TABLES_TAG_LIMIT = 8000  # MLflow's cut of a tag value (the list of a run's tables)
SQLITE_PREFIX = "sqlite:///"  # a local store file, opened under a lock (open_client)


class MlflowTracker:
    def __init__(self, run_id: str | None = None, experiment: str | None = None, run_name: str | None = None,
                 parent_run_id: str | None = None, tags: dict | None = None, tracking_uri: str | None = None,
                 experiment_id: str | None = None):
        for name, value in HTTP_BOUNDS.items():
            os.environ.setdefault(name, value)
        self.client = open_client(tracking_uri)
        if not run_id and not parent_run_id:  # a nested run is always new, also under `mlflow run`
            run_id = os.environ.get("MLFLOW_RUN_ID")
        if run_id:  # `mlflow run` created the run and passes it on: attach to it
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
        else:
            if not (experiment_id or experiment) and parent_run_id:  # beside its parent
                experiment_id = self.client.get_run(parent_run_id).info.experiment_id
            exp_id = experiment_id or self._experiment_id(experiment)
            run_tags = dict(tags or {})
            if parent_run_id:
                run_tags["mlflow.parentRunId"] = parent_run_id
            self.run_id = self.client.create_run(exp_id, run_name=run_name, tags=run_tags).info.run_id
        self._experiment: str | None = None
        self._mark_training_experiment()
        self.errors: list[str] = []
        self.finished = False
        self.lost_metrics = 0  # metric values that never reached the server
        self.away_since: float | None = None  # monotonic time the server stopped answering
        self._lost_reported = 0
        self._full_warned = False
        self._last_step = 0
        self._metrics: list = []
        self._last_flush = time.monotonic()
        self._images_logged: set[str] = set()
        self._images_failed: set[str] = set()
        self._tables: set[str] = set()  # listed in mlflow.loggedArtifacts
        self._checkpoint_models: dict[tuple[str, int], str] = {}  # (run id, step) -> logged model id
        self._eval_dataset: tuple[str, str] | None = None  # (name, digest) of the eval set, once logged
        self._times_step, self._metric_times = -1, {}  # the latest step's metrics: name -> timestamp
        self._system: threading.Thread | None = None
        self._system_stop = threading.Event()
        self._queue: queue.Queue = queue.Queue()
        self._done = threading.Condition()
        self._submitted = self._settled = 0  # calls queued / delivered or dropped: what flush() waits on
        self.cost_s = 0.0  # time the worker spent in MLflow calls
        self._worker = threading.Thread(target=self._work, name="mlflow-tracker", daemon=True)
        self._worker.start()

    def _mark_training_experiment(self) -> None:
        """MLflow 3 opens an experiment of no declared kind in its GenAI view (trace charts, a pop-up), where
        training runs are a click away: the run's experiment (Default included) is tagged as model
        training, unless someone chose a kind for it."""
        try:
            exp_id = self._experiment = self.client.get_run(self.run_id).info.experiment_id
            if EXPERIMENT_KIND not in self.client.get_experiment(exp_id).tags:
                self.client.set_experiment_tag(exp_id, EXPERIMENT_KIND, TRAINING_KIND)
        except Exception as e:  # noqa: BLE001 - the UI's first view, not worth a run
            _warn(f"could not tag the experiment as model training: {first_line(e)}")

    def _experiment_id(self, experiment: str | None) -> str:
        """The experiment's id, created if missing. Workers started together may both find it missing:
        the one whose create is refused takes the other's."""
        from mlflow.exceptions import MlflowException

        name = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
        exp = self.client.get_experiment_by_name(name)
        if exp:
            return exp.experiment_id
        try:
            return self.client.create_experiment(name)
        except MlflowException:
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    @property
    def experiment_id(self) -> str:
        if self._experiment is None:
            self._experiment = self.client.get_run(self.run_id).info.experiment_id
        return self._experiment

    # -- the background worker -------------------------------------------------------------
    # Calls wait in `held` (oldest first) until delivered or dropped. Items: (what, payload, n) where
    # payload is a list of Metric for "log_metrics", else a function; n counts the submitted calls.
    def _work(self) -> None:
        held: deque = deque()
        stop_at = None  # set by finish(): the time to stop waiting for an away server
        while True:
            stop_at = self._take(held, stop_at)
            self._hold_within_bound(held)
            if not held:
                if stop_at is not None:
                    break
                continue
            if self.away_since is not None and stop_at is not None and time.monotonic() > stop_at:
                self._drop_all(held)
                break
            self._deliver(held)
        if self.away_since is None:
            self._report_lost()

    def _take(self, held: deque, stop_at: float | None) -> float | None:
        """Moves what was queued into `held`, waiting for the first item only when idle."""
        block = not held and stop_at is None
        while True:
            try:
                item = self._queue.get(block=block)
            except queue.Empty:
                return stop_at
            block = False
            if item is None:
                stop_at = time.monotonic() + FINISH_WAIT_S
            else:
                held.append(item)

    def _deliver(self, held: deque) -> None:
        what, payload, n = _coalesce_metrics(held) if held[0][0] == "log_metrics" else held[0]
        t0 = time.perf_counter()
        try:
            if what == "log_metrics":
                self.client.log_batch(self.run_id, metrics=payload)
            else:
                payload()
        except Exception as e:  # a tracking hiccup must not kill a long run
            if _server_away(e):
                self._went_away(e)
                self.cost_s += time.perf_counter() - t0
                time.sleep(RETRY_S)
                return  # held: tried again next round
            self._error(what, e)
            if what == "log_metrics":  # refused for good: these values never arrive either
                self.lost_metrics += len(payload)
        else:
            if self.away_since is not None:
                self._came_back()
        self.cost_s += time.perf_counter() - t0
        held.popleft()
        self._settle(n)

    def _hold_within_bound(self, held: deque) -> None:
        """While the server is away, drops the oldest held metric values beyond HOLD_METRICS, counting
        them (a backlog while it answers is delivered, whatever its size)."""
        if self.away_since is None:
            return
        excess = sum(len(p) for w, p, _ in held if w == "log_metrics") - HOLD_METRICS
        if excess <= 0:
            return
        while excess > 0:
            i = next(i for i, (w, _, _) in enumerate(held) if w == "log_metrics")
            what, payload, n = held[i]
            if len(payload) > excess:  # only the oldest values of this batch
                held[i] = (what, payload[excess:], n)
                dropped = excess
            else:
                del held[i]
                dropped = len(payload)
                self._settle(n)
            excess -= dropped
            self.lost_metrics += dropped
        if not self._full_warned:  # once per outage
            self._full_warned = True
            _warn(f"{HOLD_METRICS:,} metric values held for the tracking server: dropping the oldest, "
                  f"{self.lost_metrics} lost so far (logged as {LOST_METRICS} once it is back)")

    def _drop_all(self, held: deque) -> None:
        """finish() waited FINISH_WAIT_S and the server is still away: what is held is lost."""
        others = [w for w, _, _ in held if w != "log_metrics"]
        metrics = sum(len(p) for w, p, _ in held if w == "log_metrics")
        self.lost_metrics += metrics
        self.errors += [f"{w}: not delivered (tracking server unreachable)" for w in others]
        _warn(f"tracking server still unreachable {FINISH_WAIT_S:g} s after the run ended: {metrics} metric "
              f"values and {len(others)} other calls ({', '.join(sorted(set(others))) or 'none'}) not delivered")
        self._settle(sum(n for _, _, n in held))
        held.clear()

    def _went_away(self, e: Exception) -> None:
        if self.away_since is None:
            self.away_since = time.monotonic()
            _warn(f"tracking server unreachable ({first_line(e)[:300]}); holding up to {HOLD_METRICS:,} metric "
                  f"values, retrying every {RETRY_S:g} s; training goes on")

    def _came_back(self) -> None:
        away = time.monotonic() - self.away_since
        self.away_since, self._full_warned = None, False
        lost = f"; {self.lost_metrics} metric values lost" if self.lost_metrics else ""
        print(f"[mlflow] tracking server back after {away:.1f} s: delivering what was held{lost}", file=sys.stderr)
        self._report_lost()

    def _report_lost(self) -> None:
        """The lost count goes to the run (metric + tag) as soon as the server takes calls."""
        from mlflow.entities import Metric, RunTag

        if self.lost_metrics <= self._lost_reported:
            return
        n = self.lost_metrics
        try:
            self.client.log_batch(self.run_id, metrics=[Metric(LOST_METRICS, n, int(time.time() * 1000),
                                                               self._last_step)],
                                  tags=[RunTag(LOST_METRICS, str(n))])
            self._lost_reported = n
        except Exception as e:  # noqa: BLE001 - tried again the next time a call goes through
            self.errors.append(f"{LOST_METRICS}: {first_line(e)}")

    def _error(self, what: str, e: Exception) -> None:
        msg = f"{what}: {type(e).__name__}: {first_line(e)}"
        self.errors.append(msg)
        if len(self.errors) <= 5:
            _warn(f"{msg} (training goes on)")
        self._report_failures()

    def _report_failures(self) -> None:
        """The failed calls go to the run as they happen: a metric counting them and an artifact naming
        each (what, when, why), so a run that lost a table or a checkpoint says so in MLflow itself."""
        from mlflow.entities import Metric

        try:
            self.client.log_batch(self.run_id, metrics=[Metric(FAILED_CALLS, len(self.errors),
                                                               int(time.time() * 1000), self._last_step)])
            self.client.log_dict(self.run_id, {"failed_calls": self.errors}, FAILED_CALLS_FILE)
        except Exception as e:  # noqa: BLE001 - the store refuses this too: the console line stays
            _warn(f"could not record the failed tracking calls on the run: {first_line(e)}")

    def _settle(self, n: int) -> None:
        with self._done:
            self._settled += n
            self._done.notify_all()

    def _submit(self, what: str, payload) -> None:
        with self._done:
            self._submitted += 1
        self._queue.put((what, payload, 1))

    def flush(self, timeout: float | None = FINISH_WAIT_S) -> bool:
        """Waits until every call so far is delivered or dropped; False if `timeout` ran out first
        (the server is away: the calls stay held)."""
        self._flush_metrics()
        with self._done:
            target = self._submitted
            return self._done.wait_for(lambda: self._settled >= target, timeout)

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
        self._last_step = int(step)
        if step != self._times_step:
            self._times_step, self._metric_times = int(step), {}
        self._metric_times.update(dict.fromkeys(metrics, now))
        self._metrics += [Metric(k, float(v), now, int(step)) for k, v in metrics.items()]
        if len(self._metrics) >= METRIC_BATCH or time.monotonic() - self._last_flush > METRIC_FLUSH_S:
            self._flush_metrics()

    def _flush_metrics(self) -> None:
        batch, self._metrics = self._metrics, []
        self._last_flush = time.monotonic()
        for i in range(0, len(batch), METRIC_BATCH):
            self._submit("log_metrics", batch[i:i + METRIC_BATCH])

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
            for r in rows:  # a row whose image could not be read keeps its text, with no thumbnail
                stem = _image_stem(r[image_column])
                r["image"] = ({"type": "image", "filepath": f"golden/images/{stem}.png",
                               "compressed_filepath": f"golden/images/{stem}.webp"}
                              if r[image_column] in self._images_logged else None)
            rows = [{"image": r.pop("image"), **r} for r in rows]
        # written and uploaded here: MlflowClient.log_table downloads and appends to a table already there
        # (a table re-logged at every save would grow with the run) and reads the run for every call
        folder, name = posixpath.split(artifact_file)
        with tempfile.TemporaryDirectory() as tmp:
            pd.DataFrame(rows).to_json(Path(tmp) / name, orient="split", index=False, date_format="iso")
            self.client.log_artifact(self.run_id, str(Path(tmp) / name), folder or None)
        self._register_table(artifact_file)

    def _register_table(self, artifact_file: str) -> None:
        """Lists the table in the run's `mlflow.loggedArtifacts` tag, once per path: `mlflow ui` shows a
        JSON file as a table (thumbnails included) only when it is listed there. MLflow cuts the tag at
        TABLES_TAG_LIMIT characters, so a table that would not fit stays an artifact with no table view."""
        from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_ARTIFACTS

        if artifact_file in self._tables:
            return
        listed = json.loads(self.client.get_run(self.run_id).data.tags.get(MLFLOW_LOGGED_ARTIFACTS, "[]"))
        entry = {"path": artifact_file, "type": "table"}
        if entry not in listed:
            value = json.dumps(listed + [entry])
            if len(value) > TABLES_TAG_LIMIT:
                raise ValueError(f"{artifact_file} is uploaded, but MLflow's list of the run's tables is full "
                                 f"({len(listed)} tables): it has no table view")
            self.client.set_tag(self.run_id, MLFLOW_LOGGED_ARTIFACTS, value)
        self._tables.add(artifact_file)

    def _upload_images(self, relpaths: list[str], image_root: Path) -> None:
        """Each image and its thumbnail, once per run. One image that cannot be read costs its own row's
        thumbnail (the failure is recorded on the run), never the others'."""
        from vlmtrack.data.dataset import load_image

        todo = [p for p in relpaths if p not in self._images_logged and p not in self._images_failed]
        if not todo:
            return
        done = []
        with tempfile.TemporaryDirectory() as tmp:
            for rel in todo:
                try:
                    image = load_image(image_root, rel)
                    stem = _image_stem(rel)
                    image.save(Path(tmp) / f"{stem}.png")
                    thumbnail(image).save(Path(tmp) / f"{stem}.webp")
                    done.append(rel)
                except Exception as e:  # noqa: BLE001 - the table goes on without this thumbnail
                    self._images_failed.add(rel)
                    self._error(f"log_table image {rel}", e)
            if done:
                self.client.log_artifacts(self.run_id, tmp, "golden/images")
        self._images_logged.update(done)

    def _delete_artifacts(self, run_id: str, artifact_path: str) -> None:
        """Removes an artifact folder of a run (a checkpoint logged as run artifacts), unless a registered model
        version was made from it. MlflowClient has no call for it; the run's artifact repository has (local,
        S3, the server's proxied store)."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        if users := used_by_registered_versions(self.client, run_id, None, artifact_path):
            _warn(f"{artifact_path} of run {run_id} is kept: registered model version {', '.join(users)} uses it")
            return
        repo = get_artifact_repository(self.client.get_run(run_id).info.artifact_uri,
                                       self.client._tracking_client.tracking_uri)
        repo.delete_artifacts(artifact_path)

    def log_checkpoint(self, step: int, files: list[Path], metrics: dict) -> None:
        """The checkpoint's files as a logged model of this run at `step` (stored once: not also as run
        artifacts), with `metrics` (the step's eval) linked to it, so that `search_logged_models` ranks a
        run's checkpoints by eval loss.

        Why the metrics are sent again here: at a step the loop evaluates first and saves last (retention needs
        the step's eval to know the best checkpoint), so the model does not exist yet when the eval metrics
        are logged. They are re-sent with the model's id and the timestamps they were logged with: the store
        keeps a single run-metric row per (name, step, timestamp, value), so the run's history does not change,
        and the model gets its rows. The eval metrics also name the eval set (dataset name and digest)."""
        from mlflow.entities import Metric

        self._flush_metrics()  # the run's rows first, so that the re-sent ones match them
        now = int(time.time() * 1000)
        times = self._metric_times if step == self._times_step else {}
        dataset = self._eval_dataset if self._eval_dataset else (None, None)
        linked = [Metric(k, float(v), times.get(k, now), int(step), dataset_name=dataset[0],
                         dataset_digest=dataset[1]) for k, v in metrics.items()]
        files, state = [Path(f) for f in files], {}

        def log():  # on the worker: nothing here may wait on the server in the training thread
            try:
                self._checkpoint_models[(self.run_id, step)] = log_checkpoint_model(
                    self.client, self.run_id, self.experiment_id, step, files, linked, state)
            except Exception as e:
                if "model_id" in state and not _server_away(e):  # it stays listed, as FAILED
                    with contextlib.suppress(Exception):
                        self.client.finalize_logged_model(state["model_id"], "FAILED")
                raise
        self._submit("log_checkpoint", log)

    def delete_checkpoint(self, step: int, run_id: str | None = None) -> None:
        """Retention: the checkpoint's logged model of this run (or of `run_id`: an earlier attempt of the same
        training) goes, with its artifacts, in order after what was queued before; one that a registered
        model version was made from is kept. A checkpoint logged as run artifacts (before checkpoints were
        logged models) is removed from the run's artifacts."""
        run_id = run_id or self.run_id

        def delete():
            known = [m for m in [self._checkpoint_models.pop((run_id, step), None)] if m]
            if not delete_checkpoint_model(self.client, run_id, step, known, _warn):
                self._delete_artifacts(run_id, checkpoint_name(step))
        self._submit("delete_checkpoint", delete)

    def log_datasets(self, datasets: list[DatasetRecord]) -> None:
        """The run's data as MLflow datasets (the run page's Datasets), each with our hash as its digest and its
        role as the input's context (train, eval, golden); a checkpoint's eval metrics then name the eval set."""
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        inputs = [DatasetInput(Dataset(d.name, d.digest, "local", json.dumps({"uri": d.source}),
                                       profile=json.dumps(d.profile)), [InputTag(MLFLOW_DATASET_CONTEXT, d.context)])
                  for d in datasets]
        self._eval_dataset = next(((d.name, d.digest) for d in datasets if d.context == EVAL_CONTEXT), None)
        self._submit("log_inputs", lambda: _log_inputs(self.client, self.run_id, inputs))

    def monitor_system(self) -> None:
        """System metrics (tracking/system_metrics.py) on this run until finish()."""
        if self._system is not None:
            return
        uri = self.client._tracking_client.tracking_uri

        def emit(metrics: dict, step: int) -> None:  # the sampler's thread: straight to the queue
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            self._submit("log_metrics", [Metric(k, v, now, step) for k, v in metrics.items()])
        self._system = threading.Thread(target=sample_system, args=(self.run_id, uri, emit, self._system_stop),
                                        name="system-metrics", daemon=True)
        self._system.start()

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

    def end_run(self, run_id: str, status: str, error: str) -> None:
        """Ends another run of this store whose process died (a SIGKILLed sweep worker cannot end its
        trial's run) with `status` and an `error` tag, unless it has ended already. Queued like any call:
        a failure is counted and recorded on this run."""
        self._submit("end_run", lambda: self._end_run(run_id, status, error))

    def _end_run(self, run_id: str, status: str, error: str) -> None:
        from mlflow.entities import RunTag

        if self.client.get_run(run_id).info.status != "RUNNING":
            return
        self.client.log_batch(run_id, tags=[RunTag("error", error[:5000])])
        self.client.set_terminated(run_id, status)

    def finish(self, status: str = "FINISHED", error: str | None = None) -> None:
        """Delivers what is queued (waiting up to FINISH_WAIT_S for an away server; what is still held
        then is counted lost), marks the run, and says what tracking lost, if anything. RUNNING leaves the
        run running: a sweep's parent run that other workers still use."""
        from mlflow.entities import RunTag

        if self.finished:  # the first status wins (e.g. FAILED set by the loop before it raised)
            return
        self.finished = True
        if self._system is not None:  # its last values go out with the rest
            self._system_stop.set()
            self._system.join(timeout=30)
        if error:
            self._submit("error tag", lambda: self.client.log_batch(
                self.run_id, tags=[RunTag("error", error[:5000])]))
        self._flush_metrics()
        self._queue.put(None)
        self._worker.join(timeout=FINISH_WAIT_S + 30)  # + one call's bounded HTTP retries
        if self._worker.is_alive():
            _warn(f"a tracking call is still running after {FINISH_WAIT_S + 30:g} s; its data may not arrive")
        try:
            if status != "RUNNING":
                self.client.set_terminated(self.run_id, status)
        except Exception as e:
            _warn(f"could not mark run {self.run_id} {status}: {first_line(e)}")
        if self.lost_metrics or self.errors:
            _warn(f"run {self.run_id}: {self.lost_metrics} metric values lost ({LOST_METRICS}), "
                  f"{len(self.errors)} tracking calls failed")


def open_client(tracking_uri: str | None = None):
    """An MlflowClient on `tracking_uri` (default: MLflow's own, MLFLOW_TRACKING_URI included). Opening a
    local sqlite store creates or migrates its schema, and MLflow does that unguarded: two workers
    started together on a fresh store both create the tables and one dies ("table ... already exists").
    So a sqlite store is opened under a file lock beside it; once the schema is there, opening is a check."""
    import mlflow
    from mlflow import MlflowClient

    uri = tracking_uri or mlflow.get_tracking_uri()
    with _store_lock(uri):
        return MlflowClient(uri)


@contextlib.contextmanager
def _store_lock(uri: str):
    """Holds a lock on `<db>.init-lock` beside a sqlite store's file (nothing for other stores: a server
    or a PostgreSQL store serialises its own schema changes)."""
    db = Path(uri[len(SQLITE_PREFIX):].split("?", 1)[0]) if uri.startswith(SQLITE_PREFIX) else None
    if db is None or ":memory:" in str(db) or not db.parent.is_dir():  # nothing shared, or MLflow's own error
        yield
        return
    with file_lock(Path(f"{db}.init-lock")):
        yield


def _coalesce_metrics(held: deque) -> tuple:
    """Consecutive metric batches at the head of `held` become one log_batch (catch-up after an
    outage: one call per METRIC_BATCH values, not one per 5-second flush)."""
    metrics, n = [], 0
    while held and held[0][0] == "log_metrics" and len(metrics) + len(held[0][1]) <= METRIC_BATCH:
        _, payload, k = held.popleft()
        metrics, n = metrics + payload, n + k
    held.appendleft(("log_metrics", metrics, n))
    return held[0]


def _server_away(e: BaseException) -> bool:
    """The server could not be reached, timed out, or kept answering 429/5xx through MLflow's own
    retries: the call is worth holding. MLflow wraps these in an MlflowException raised while handling
    the requests error, so the chain is searched. Anything else (a bad value, a permission) is final."""
    import requests

    for _ in range(10):
        if e is None:
            return False
        if isinstance(e, (requests.ConnectionError, requests.Timeout, requests.exceptions.RetryError)):
            return True
        e = e.__cause__ or e.__context__
    return False


def _log_inputs(client, run_id: str, inputs: list) -> None:
    """MLflow looks a dataset up, then inserts it: two runs of one experiment that log the same dataset at
    once (sweep workers) can both miss it, and the second insert breaks the unique (experiment, name,
    digest) key. Tried again, the lookup finds the other run's row and only links it to this run."""
    from mlflow.exceptions import MlflowException

    try:
        client.log_inputs(run_id, datasets=inputs)
    except MlflowException as e:
        if not any(s in str(e) for s in ("UNIQUE constraint failed", "duplicate key value", "IntegrityError")):
            raise
        client.log_inputs(run_id, datasets=inputs)


def _warn(msg: str) -> None:
    print(f"[mlflow] warning: {msg}", file=sys.stderr)


def thumbnail(image):
    """MLflow's table thumbnail (the longer side scaled to COMPRESSED_IMAGE_SIZE, the aspect kept), but never
    a side of 0 px: mlflow's compress_image_size rounds a 10000 x 20 web banner to 256 x 0 and fails."""
    from mlflow.tracking.multimedia import COMPRESSED_IMAGE_SIZE

    width, height = image.size
    scale = COMPRESSED_IMAGE_SIZE / max(width, height)
    return image.resize((max(1, int(width * scale)), max(1, int(height * scale))))


def _image_stem(relpath: str) -> str:
    return relpath.replace("/", "__").rsplit(".", 1)[0]
