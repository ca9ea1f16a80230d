"""Checkpoints read back from MLflow: a `runs:/<run_id>/checkpoints/step_{k}` URI is downloaded, with the
run's resolved config, to a local folder that eval then loads like any checkpoint folder."""
from __future__ import annotations

import tempfile
from pathlib import Path

from vlmtrack.config import ConfigError


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


def download_checkpoint(uri: str) -> tuple[Path, Path]:
    """(checkpoint folder, config.yaml) downloaded from the run the URI names."""
    import mlflow

    run_id = uri.split("/")[1]
    dest = Path(tempfile.mkdtemp(prefix="vlmtrack-ckpt-"))
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest)))
    config = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="config/config.yaml",
                                                      dst_path=str(dest)))
    return folder, config
