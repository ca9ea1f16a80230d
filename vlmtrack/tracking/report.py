"""`vlmtrack report`: the snippet the spec asks for at its end, read back from MLflow alone (no output
directory needed): one run's eval loss by bucket with token counts, golden items from its last
checkpoint, and the sweep table with the winner marked. Written as Markdown, which also reads as text."""
from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vlmtrack.data.golden import GOLDEN_TABLE_DIR, is_latest_golden_table, legacy_golden_table_step
from vlmtrack.eval.ablations import order_text
from vlmtrack.tracking.mlflow_tracker import DEFAULT_EXPERIMENT, open_client
from vlmtrack.tracking.sweep_table import format_table

PARENT_TAG = "mlflow.parentRunId"
WINNER_TAG = "winner_run_id"  # set on the sweep run that holds the summary (sweep/summary.py)
REPORT_FILE = "report.md"


class ReportError(ValueError):
    """The run, experiment or sweep to report on cannot be found; the message says what to give instead."""


@dataclass
class Report:
    run_id: str  # the run report.md is logged on: the one asked for
    text: str


def _client(tracking_uri: str | None):
    import mlflow

    uri = tracking_uri or mlflow.get_tracking_uri()
    return open_client(uri), uri


def _get_run(client, uri: str, run_id: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException:
        raise ReportError(f"no run '{run_id}' in the tracking store {uri} "
                          "(MLFLOW_TRACKING_URI picks the store)") from None


def _experiment(client, uri: str, name: str | None):
    """--experiment, else what `vlmtrack train` would use; under `mlflow run` (which sets only
    MLFLOW_EXPERIMENT_ID), the experiment that run is in."""
    from mlflow.exceptions import MlflowException

    exp_id = os.environ.get("MLFLOW_EXPERIMENT_ID")
    name = name or os.environ.get("MLFLOW_EXPERIMENT_NAME") or (None if exp_id else DEFAULT_EXPERIMENT)
    try:
        exp = client.get_experiment_by_name(name) if name else client.get_experiment(exp_id)
    except MlflowException:
        exp = None
    if exp is None:
        raise ReportError(f"no experiment '{name or exp_id}' in the tracking store {uri} "
                          "(--experiment names it; MLFLOW_TRACKING_URI picks the store)")
    return exp


def _runs(client, exp_id: str, filter_string: str):
    """Newest first, every page."""
    token = None
    while True:
        page = client.search_runs([exp_id], filter_string, order_by=["attributes.start_time DESC"],
                                  max_results=200, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def is_training_run(run) -> bool:
    """A top-level run that trained (a sweep's trials are nested under its parent run)."""
    return PARENT_TAG not in run.data.tags and "eval_loss" in run.data.metrics


def latest_training_run(client, exp) -> object | None:
    finished = _runs(client, exp.experiment_id, "attributes.status = 'FINISHED' and metrics.eval_loss >= 0")
    return next((r for r in finished if is_training_run(r)), None)


def sweep_of(client, run) -> object | None:
    """The sweep run holding the summary that `run` belongs to: itself, or its parent; with several
    workers, the summary may sit on another worker's run of the same study."""
    if WINNER_TAG in run.data.tags:
        return run
    study = run.data.tags.get("optuna_study")
    if PARENT_TAG in run.data.tags:
        parent = client.get_run(run.data.tags[PARENT_TAG])
        if WINNER_TAG in parent.data.tags:
            return parent
        study = parent.data.tags.get("optuna_study", study)
    if study:
        return latest_sweep(client, run.info.experiment_id, study)
    return None


def latest_sweep(client, exp_id: str, study: str | None = None) -> object | None:
    where = f"tags.{WINNER_TAG} != ''" + (f" and tags.optuna_study = '{study}'" if study else "")
    return next(iter(_runs(client, exp_id, where)), None)


def bucket_names(run) -> list[str]:
    """In the run's configured order (param data.bucket_names), else as its metrics name them."""
    found = {k.removeprefix("eval_loss_") for k in run.data.metrics if k.startswith("eval_loss_")}
    try:
        order = ast.literal_eval(run.data.params.get("data.bucket_names", "[]"))
    except (ValueError, SyntaxError):
        order = []
    return [b for b in order if b in found] + sorted(found - set(order))


def eval_section(client, run) -> list[str]:
    m = run.data.metrics
    if "eval_loss" not in m:
        raise ReportError(f"run '{run.info.run_id}' has no eval_loss: give a training run (or a sweep's run)")
    history = client.get_metric_history(run.info.run_id, "eval_loss")
    step = max(h.step for h in history) if history else "?"
    lines = [f"## Eval loss (token-weighted, nats/token, step {step})", "",
             "| bucket | eval_loss | label tokens | examples |", "|---|---|---|---|"]
    for name, suffix in [("all", ""), *[(b, f"_{b}") for b in bucket_names(run)]]:
        tokens, examples = (m.get(f"eval_{k}{suffix or '_total'}") for k in ("label_tokens", "examples"))
        lines.append(f"| {name} | {m[f'eval_loss{suffix}']:.4f} | {_count(tokens)} | {_count(examples)} |")
    ablation = [f"{k}={m[k]:.4f}" for k in ("delta_shuffle", "delta_zero", "delta_noise", "score") if k in m]
    if ablation:
        lines += ["", "Vision ablations: " + " ".join(ablation)]
        if "ablation_order_ok" in m:
            lines += [f"Ablation order {order_text(m)}"]
    return lines


def _count(value) -> str:
    return "–" if value is None else f"{int(value):,}"


def golden_table_path(client, run) -> str | None:
    """The table of the run's latest golden captions (its last save's). A run logged with one table per
    save (before the history tables): the table of its last checkpoint (tag `last_checkpoint`), else the
    latest one."""
    paths = [f.path for f in client.list_artifacts(run.info.run_id, GOLDEN_TABLE_DIR)]
    latest = [p for p in paths if is_latest_golden_table(p)]
    if latest:
        return latest[0]
    tables = {step: p for p in paths if (step := legacy_golden_table_step(p)) is not None}
    if not tables:
        return None
    last = re.search(r"step_(\d+)$", run.data.tags.get("last_checkpoint", ""))
    return tables.get(int(last.group(1))) if last and int(last.group(1)) in tables else tables[max(tables)]


def load_table(client, run_id: str, path: str) -> list[dict]:
    """A table logged with log_table, as rows. Read through this client (MlflowClient.load_table
    downloads through the global tracking URI, which may name another store)."""
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as tmp, _no_progress_bar():
        try:
            data = json.loads(Path(client.download_artifacts(run_id, path, tmp)).read_text())
        except (MlflowException, OSError) as e:  # the run's files gone from the artifact store, or unreachable
            where = client.get_run(run_id).info.artifact_uri
            raise ReportError(f"run {run_id}: artifact '{path}' cannot be read from {where} "
                              f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    return [dict(zip(data["columns"], row)) for row in data["data"]]


@contextlib.contextmanager
def _no_progress_bar():
    """MLflow draws a download bar per file on stderr, read at each download: noise around a report."""
    name, before = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ[name] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name)
        else:
            os.environ[name] = before


def golden_section(client, run, items: int) -> list[str]:
    path = golden_table_path(client, run)
    if path is None:
        return ["## Golden captions", "", "(no golden table logged on this run)"]
    rows = load_table(client, run.info.run_id, path)
    k = min(items, len(rows))
    picked = [rows[i * len(rows) // k] for i in range(k)]  # spread over the set, so every bucket shows
    lines = [f"## Golden captions ({k} of {len(rows)}, `{path}`)", "", "| id | gt | pred |", "|---|---|---|"]
    lines += [f"| {_cell(r['id'])} | {_cell(r['gt_text'])} | {_cell(r['pred_text'])} |" for r in picked]
    return lines


def _cell(value) -> str:
    return " ".join(str(value).split()).replace("|", "\\|")


def sweep_section(client, sweep) -> list[str]:
    rows = load_table(client, sweep.info.run_id, "sweep/summary.json")
    winner = sweep.data.tags.get(WINNER_TAG)
    header, *lines = format_table(rows).splitlines()
    lines = [line + ("  ← winner" if r["mlflow_run_id"] == winner else "") for r, line in zip(rows, lines)]
    study = sweep.data.tags.get("optuna_study", "?")
    return [f"## Sweep `{study}` (run {sweep.info.run_id}, {len(rows)} trials, lower score is better)", "",
            header, re.sub(r"[^|]", "-", header), *lines]


def build_report(run_id: str | None = None, experiment: str | None = None, sweep_id: str | None = None,
                 with_sweep: bool = True, items: int = 10, tracking_uri: str | None = None) -> Report:
    """The report on `run_id`, else on the latest finished top-level training run of the experiment.
    A sweep run given as `run_id` reports on its winner's training. The sweep table comes from
    `sweep_id`, else from the sweep the run belongs to, else from the experiment's latest sweep."""
    client, uri = _client(tracking_uri)
    if run_id:
        target = _get_run(client, uri, run_id)
    else:
        exp = _experiment(client, uri, experiment)
        # a sweep-only experiment: its latest complete sweep, reported on through its winner
        target = latest_training_run(client, exp) or latest_sweep(client, exp.experiment_id)
        if target is None:
            raise ReportError(f"no finished training run or complete sweep in experiment '{exp.name}' at {uri}: "
                              "give a run id, or --experiment")
    sweep = None
    if with_sweep:
        sweep = _get_run(client, uri, sweep_id) if sweep_id else (
            sweep_of(client, target) or latest_sweep(client, target.info.experiment_id))
        if sweep is not None and WINNER_TAG not in sweep.data.tags:
            raise ReportError(f"run '{sweep.info.run_id}' holds no sweep summary (the grid is not complete, "
                              "or it is not a sweep run)")
    trained = target
    if WINNER_TAG in target.data.tags:  # a sweep run: its winner is what trained
        trained = _get_run(client, uri, target.data.tags[WINNER_TAG])
    name = trained.info.run_name or trained.info.run_id
    exp_name = client.get_experiment(trained.info.experiment_id).name
    lines = [f"# vlmtrack report: {name}", "",
             f"Run `{trained.info.run_id}` in experiment `{exp_name}`, {trained.info.status}, "
             f"last checkpoint `{trained.data.tags.get('last_checkpoint', '–')}`; tracking store {uri}", ""]
    lines += eval_section(client, trained) + [""] + golden_section(client, trained, items)
    if sweep is not None:
        lines += [""] + sweep_section(client, sweep)
    return Report(target.info.run_id, "\n".join(lines) + "\n")


def log_report(report: Report, tracking_uri: str | None = None) -> str:
    """Writes the report as `report.md` on the run it reports on; returns the artifact path."""
    client, _ = _client(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / REPORT_FILE
        path.write_text(report.text)
        client.log_artifact(report.run_id, str(path))
    return REPORT_FILE
