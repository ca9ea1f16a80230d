"""System metrics of a training run (train.system_metrics): CPU, memory, disk, network and, where NVML sees a
GPU, each GPU's utilisation, memory and power, as MLflow's `system/...` metrics (its run page's System metrics
tab). MLflow starts its monitor only for runs made through `mlflow.start_run`; ours are made with
`MlflowClient.create_run`, so the tracker starts one explicitly.

MLflow's own monitor samples through `SystemMetricsMonitor` and logs with a client of its own: a failed call
ends its thread with a log line, and an unreachable server stops it for good. Here its monitors sample and the
values go through the tracker's queue like every other metric: held while the server is away, counted when lost.
"""
from __future__ import annotations

import sys
import threading

SAMPLE_EVERY_S = 10.0  # MLflow's default; MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides it, as in MLflow
PREFIX = "system/"


def sample_system(run_id: str, tracking_uri: str, emit, stop: threading.Event) -> None:
    """Until `stop`: every sampling interval, one sample of every monitor, emitted as `emit(metrics, step)` with
    steps 0, 1, 2, ... (MLflow's numbering of system metrics). A sample that fails is reported and skipped."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        # its monitors (CPU and memory, disk, network, NVIDIA or AMD GPU when present) and its interval; its
        # own thread is never started
        probe = SystemMetricsMonitor(run_id, sampling_interval=SAMPLE_EVERY_S, tracking_uri=tracking_uri)
        every = float(probe.sampling_interval)
        _sample(probe)  # psutil's first CPU reading covers nothing: taken and dropped
    except Exception as e:  # noqa: BLE001 - e.g. psutil missing: the run trains without system metrics
        print(f"[mlflow] warning: no system metrics for this run ({type(e).__name__}: {e}); `pip install psutil`, "
              "or set train.system_metrics=false", file=sys.stderr)
        return
    step, failures = 0, 0
    while not stop.wait(every):
        try:
            metrics = _sample(probe)
        except Exception as e:  # noqa: BLE001 - a monitor that fails once costs that sample, not the run
            failures += 1
            if failures <= 3:
                print(f"[mlflow] warning: system metrics sample failed: {type(e).__name__}: {e}", file=sys.stderr)
            continue
        emit({PREFIX + k: float(v) for k, v in metrics.items()}, step)
        step += 1


def _sample(probe) -> dict:
    probe.collect_metrics()
    metrics = probe.aggregate_metrics()
    for monitor in probe.monitors:
        monitor.clear_metrics()
    return metrics
