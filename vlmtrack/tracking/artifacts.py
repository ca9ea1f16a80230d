"""Checkpoints in MLflow. A kept checkpoint is an MLflow 3 logged model of the run that wrote it, at its step
(its weights and connector.json are the model's artifacts, stored once). This module owns how such a model is
named and tagged, how one is found again, and how a `runs:/<run_id>/checkpoints/step_{k}` URI (what `ablate` and
`golden` accept) is downloaded, with the run's resolved config, to a local folder that eval then loads like any
checkpoint folder. Checkpoints logged before they were logged models (run artifacts) still resolve."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from vlmtrack.config import ConfigError
from vlmtrack.model.connector_io import CHECKPOINTS, checkpoint_name

MODEL_TYPE = "vlmtrack-connector"  # the logged models' model_type: what `search_logged_models` can filter on
STEP_TAG = "vlmtrack.step"  # the logged model's tag: the training step it was saved at
CHECKPOINT_TAG = "vlmtrack.checkpoint"  # the logged model's tag: `checkpoints/step_{k}`, its runs:/ path


def model_name(step: int) -> str:
    """The logged model's name, as `mlflow ui` lists it beside its run (names take no `/`)."""
    return Path(checkpoint_name(step)).name


def model_tags(step: int) -> dict:
    return {STEP_TAG: str(step), CHECKPOINT_TAG: checkpoint_name(step)}


def checkpoint_models(client, run_id: str, step: int) -> list:
    """The live logged models of `run_id` saved at `step` (normally one; none for a checkpoint logged as run
    artifacts, or one that retention deleted)."""
    exp = client.get_run(run_id).info.experiment_id
    found = client.search_logged_models(
        [exp], filter_string=f"source_run_id = '{run_id}' AND tags.`{STEP_TAG}` = '{step}'")
    return [m for m in found if m.tags.get(STEP_TAG) == str(step)]


def is_artifact_uri(uri: str) -> bool:
    return uri.startswith(("runs:/", "models:/"))


EXPORT_DIR = "export"  # a run's exports, each under export/<its checkpoint's folder name>/


def export_run_id(uri: str) -> str:
    """The run a `runs:/<run_id>/checkpoints/step_{k}` URI names: where its export is logged."""
    if not uri.startswith("runs:/"):
        raise ConfigError(f"'{uri}': --log logs the export on the checkpoint's MLflow run, so it takes a "
                         "runs:/<run_id>/checkpoints/step_N checkpoint (a local folder names no run)")
    return uri.split("/")[1]


def log_export(uri: str, out_dir: Path) -> str:
    """Logs an export folder on the run of checkpoint URI `uri`; returns the export's artifact URI."""
    import mlflow

    run_id = export_run_id(uri)
    path = f"{EXPORT_DIR}/{uri.rstrip('/').rsplit('/', 1)[-1]}"
    mlflow.MlflowClient().log_artifacts(run_id, str(out_dir), artifact_path=path)
    return f"runs:/{run_id}/{path}"


def parse_checkpoint_uri(uri: str) -> tuple[str, int | None, str]:
    """(run id, checkpoint step or None, path in the run) of a `runs:/<run_id>/<path>` URI."""
    run_id, _, path = uri[len("runs:/"):].strip("/").partition("/")
    folder, _, name = path.rstrip("/").rpartition("/")
    step = int(name[len("step_"):]) if folder == CHECKPOINTS and name[len("step_"):].isdigit() else None
    return run_id, step, path


def download_checkpoint(uri: str) -> tuple[Path, Path]:
    """(checkpoint folder, config.yaml) downloaded from the run the URI names. A `runs:/.../checkpoints/step_k`
    URI is looked up among the run's logged models (by source run and step tag), then among its artifacts."""
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()
    dest = Path(tempfile.mkdtemp(prefix="vlmtrack-ckpt-"))
    if uri.startswith("models:/"):
        ref = uri[len("models:/"):].strip("/")
        if not ref.startswith("m-"):  # a registered version: `models:/NAME@ALIAS` or `models:/NAME/VERSION`
            return download_registered(client, ref, dest)
        model = client.get_logged_model(ref)  # a checkpoint's logged model, by id: `models:/m-...`
        uri = f"runs:/{model.source_run_id}/{model.tags.get(CHECKPOINT_TAG, '')}"
    run_id, step, path = parse_checkpoint_uri(uri)
    models = checkpoint_models(client, run_id, step) if step is not None else []
    if models:  # the folder keeps the checkpoint's name: eval reads the step from it
        folder = dest / Path(path).name
        folder.mkdir()
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{models[0].model_id}", dst_path=str(folder))
    else:
        try:
            folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest)))
        except mlflow.exceptions.MlflowException as e:
            if step is None:
                raise
            raise FileNotFoundError(missing_checkpoint(client, run_id, step)) from e
    config = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="config/config.yaml",
                                                      dst_path=str(dest)))
    return folder, config


def download_registered(client, ref: str, dest: Path) -> tuple[Path, Path]:
    """(checkpoint folder, config.yaml) of a registered captioning model (`vlmtrack promote`): the version's
    own copy of the connector and the run's config, so it loads whatever retention has since removed from
    the run. The folder is named after the checkpoint's step (the version's `step` tag): eval reads it."""
    import mlflow
    import yaml

    from vlmtrack.tracking.caption_model import CONFIG, CONNECTOR

    name, _, alias = ref.partition("@")
    try:
        version = (client.get_model_version_by_alias(name, alias) if alias
                   else client.get_model_version(*ref.rsplit("/", 1)))
    except (mlflow.exceptions.MlflowException, TypeError) as e:
        raise FileNotFoundError(f"models:/{ref}: no such registered model version ({first_line(e)}); give "
                                "models:/NAME@ALIAS or models:/NAME/VERSION of a model `vlmtrack promote` "
                                "registered") from None
    where = client.get_model_version_download_uri(version.name, version.version)  # the version's model files
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=where, dst_path=str(dest / "model")))
    files = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"].get("artifacts", {})
    if CONNECTOR not in files or CONFIG not in files:
        raise FileNotFoundError(f"models:/{ref} (version {version.version}) is not a vlmtrack captioning model: "
                                f"it holds no '{CONNECTOR}' and '{CONFIG}' artifacts")
    folder = dest / Path(checkpoint_name(int(version.tags.get("step", 0)))).name
    shutil.copytree(local / files[CONNECTOR]["path"], folder)
    return folder, local / files[CONFIG]["path"]


def first_line(e: BaseException) -> str:
    """An error in one line, for a log or a message (the tracker's and the artifact helpers')."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def kept_checkpoint_steps(client, run_id: str) -> list[int]:
    """The steps of a run's checkpoints in MLflow (what retention kept), oldest first: its ready logged
    models, and checkpoints logged as run artifacts before checkpoints were logged models."""
    exp = client.get_run(run_id).info.experiment_id
    steps = {int(m.tags[STEP_TAG]) for m in client.search_logged_models(
        [exp], filter_string=f"source_run_id = '{run_id}'")
        if STEP_TAG in m.tags and str(getattr(m.status, "name", m.status)).upper().endswith("READY")}
    steps |= {int(Path(f.path).name[len("step_"):]) for f in client.list_artifacts(run_id, CHECKPOINTS)
              if f.is_dir and Path(f.path).name[len("step_"):].isdigit()}
    return sorted(steps)


def missing_checkpoint(client, run_id: str, step: int) -> str:
    kept = kept_checkpoint_steps(client, run_id)
    return (f"run {run_id} has no checkpoint step_{step} in MLflow; it keeps "
            f"{', '.join(f'step_{k}' for k in kept) or 'none'} (train.keep_checkpoints removes the others): "
            f"use runs:/{run_id}/checkpoints/step_<one of them>")


def log_checkpoint_model(client, run_id: str, experiment_id: str, step: int, files: list[Path], metrics: list,
                         state: dict) -> str:
    """The checkpoint as a logged model of `run_id` at `step`, cheaply: the model (PENDING), its files uploaded
    as its artifacts (no environment inferred, no MLmodel: a connector alone is not a servable model), READY,
    then the step's metrics linked to it and the model recorded as the run's output at that step. `state`
    keeps the model id across a retry after an outage, so a retry never makes a second model."""
    from mlflow.entities import LoggedModelOutput, Metric

    if "model_id" not in state:
        state["model_id"] = client.create_logged_model(experiment_id, name=model_name(step), source_run_id=run_id,
                                                       tags=model_tags(step), model_type=MODEL_TYPE).model_id
    model_id = state["model_id"]
    for f in files:
        client.log_model_artifact(model_id, str(f))
    client.finalize_logged_model(model_id, "READY")
    if metrics:
        client.log_batch(run_id, metrics=[Metric(m.key, m.value, m.timestamp, m.step, model_id=model_id,
                                                 dataset_name=m.dataset_name, dataset_digest=m.dataset_digest)
                                          for m in metrics])
    client.log_outputs(run_id, [LoggedModelOutput(model_id, step)])
    return model_id


def used_by_registered_versions(client, run_id: str, model_id: str | None, path: str) -> list[str]:
    """The registered model versions made from this checkpoint: by its logged model (id or `models:/` URI) or
    its `runs:/` path, as the version's source, model id or a tag value (exact: step_4 is not step_40)."""
    names = {f"runs:/{run_id}/{path}"} | ({model_id, f"models:/{model_id}"} if model_id else set())
    return [f"{v.name} v{v.version}" for v in client.search_model_versions(f"run_id='{run_id}'")
            if getattr(v, "model_id", None) in names or (v.source or "").rstrip("/") in names
            or any(t in names for t in (v.tags or {}).values())]


def delete_checkpoint_model(client, run_id: str, step: int, model_ids: list[str], warn) -> bool:
    """Deletes the checkpoint's logged models (`model_ids`, else found by run and step) with their artifacts,
    unless a registered model version was made from it (kept, with a warning). False when the run has no
    logged model for the step (a checkpoint logged as run artifacts: the caller deletes those)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    models = ([client.get_logged_model(m) for m in model_ids] if model_ids
              else checkpoint_models(client, run_id, step))
    if not models:
        return False
    for m in models:
        if users := used_by_registered_versions(client, run_id, m.model_id, checkpoint_name(step)):
            warn(f"{checkpoint_name(step)} of run {run_id} is kept: registered model version "
                 f"{', '.join(users)} uses it")
            continue
        # MLflow's delete_logged_model only marks the model deleted: its files would stay in the store
        get_artifact_repository(m.artifact_location, client._tracking_client.tracking_uri).delete_artifacts()
        client.delete_logged_model(m.model_id)
    return True
