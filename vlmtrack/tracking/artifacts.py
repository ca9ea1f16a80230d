"""Checkpoints read back from MLflow: a `runs:/<run_id>/checkpoints/step_{k}` URI is downloaded, with the
run's resolved config, to a local folder that eval then loads like any checkpoint folder."""
from __future__ import annotations

import tempfile
from pathlib import Path


def is_artifact_uri(uri: str) -> bool:
    return uri.startswith(("runs:/", "models:/"))


def download_checkpoint(uri: str) -> tuple[Path, Path]:
    """(checkpoint folder, config.yaml) downloaded from the run the URI names."""
    import mlflow

    run_id = uri.split("/")[1]
    dest = Path(tempfile.mkdtemp(prefix="vlmtrack-ckpt-"))
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest)))
    config = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="config/config.yaml",
                                                      dst_path=str(dest)))
    return folder, config
