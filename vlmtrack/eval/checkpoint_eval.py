"""Ablations and golden captions on a saved connector checkpoint, outside training.

A checkpoint is a local folder `.../checkpoints/step_{k}` (its run's config.yaml two levels up) or an
MLflow artifact URI such as `runs:/<run_id>/checkpoints/step_{k}` (the run's `config/config.yaml`).
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from vlmtrack.config import Config, load_config
from vlmtrack.data.dataset import CaptionDataset
from vlmtrack.data.pipeline import RunData, prepare_data
from vlmtrack.model.backbone import Backbone, load_backbone
from vlmtrack.model.connector import Connector
from vlmtrack.train.checkpoint import load_connector_weights
from vlmtrack.train.setup import chunks, device_and_dtype, seeded_subset


@dataclass
class LoadedCheckpoint:
    cfg: Config
    step: int
    backbone: Backbone
    connector: Connector
    data: RunData
    device: torch.device
    dtype: torch.dtype


def fetch(uri: str) -> tuple[Path, Path]:
    """(checkpoint folder, config.yaml) for a local folder or an MLflow `runs:/` URI."""
    if uri.startswith("runs:/") or uri.startswith("models:/"):
        import mlflow

        run_id = uri.split("/")[1]
        dest = Path(tempfile.mkdtemp(prefix="vlmtrack-ckpt-"))
        folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest)))
        config = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="config/config.yaml",
                                                          dst_path=str(dest)))
        return folder, config
    folder = Path(uri)
    if not (folder / "connector.safetensors").exists():
        raise FileNotFoundError(f"'{uri}' is not a connector checkpoint folder (no connector.safetensors)")
    return folder, folder.parent.parent / "config.yaml"


def load_checkpoint(uri: str, overrides: list[str] = ()) -> LoadedCheckpoint:
    folder, config_path = fetch(uri)
    cfg = load_config(config_path, overrides)
    weights, meta = load_connector_weights(folder)
    device, dtype = device_and_dtype(cfg)
    backbone = load_backbone(meta["llm"], meta["vision"], dtype, cfg.model.trust_remote_code).to(device)
    connector = Connector(**meta["connector"]).to(device)
    connector.load_state_dict(weights)
    data = prepare_data(cfg, backbone.tokenizer, cfg.output_dir)
    return LoadedCheckpoint(cfg, meta["step"], backbone, connector, data, device, dtype)


def eval_dataset(lc: LoadedCheckpoint) -> CaptionDataset:
    b, d = lc.backbone, lc.data
    return CaptionDataset(d.samples, d.metas, d.split.eval, b.tokenizer, b.image_processor, d.image_root,
                          b.image_token_id, lc.cfg.model.num_latents, lc.cfg.data.max_seq_len,
                          pixel_dtype=b.tower_dtype)


def ablation_batches(lc: LoadedCheckpoint) -> list[list[int]]:
    e = lc.cfg.eval
    return chunks(seeded_subset(list(range(len(lc.data.split.eval))), e.ablation_samples, e.ablation_seed),
                  e.batch_size)
