"""Ablations and golden captions on a saved connector checkpoint, outside training.

A checkpoint is a local folder `.../checkpoints/step_{k}` (its run's config.yaml two levels up); an MLflow
artifact URI such as `runs:/<run_id>/checkpoints/step_{k}` is downloaded by tracking/artifacts.py first.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from vlmtrack.config import Config, load_config
from vlmtrack.data.dataset import CaptionDataset
from vlmtrack.data.pipeline import RunData, prepare_data
from vlmtrack.data.loader import chunks, seeded_subset
from vlmtrack.model.backbone import Backbone, load_backbone
from vlmtrack.model.connector import connector_from_config
from vlmtrack.model.connector_io import WEIGHTS_FILE, connector_kind, load_connector_weights, run_dir_of
from vlmtrack.runtime.device import device_and_dtype


@dataclass
class LoadedCheckpoint:
    cfg: Config
    step: int
    backbone: Backbone
    connector: torch.nn.Module
    data: RunData
    device: torch.device
    dtype: torch.dtype


def fetch(folder: Path) -> tuple[Path, Path]:
    """(checkpoint folder, its run's config.yaml) of a local checkpoint folder."""
    if not (folder / WEIGHTS_FILE).exists():
        raise FileNotFoundError(f"'{folder}' is not a connector checkpoint folder (no {WEIGHTS_FILE})")
    return folder, run_dir_of(folder) / "config.yaml"


def load_checkpoint(folder: Path, config_path: Path, overrides: list[str] = ()) -> LoadedCheckpoint:
    cfg = load_config(config_path, overrides)
    weights, meta = load_connector_weights(folder)
    device, dtype = device_and_dtype(cfg)
    kind = connector_kind(meta["connector"])
    backbone = load_backbone(meta["llm"], meta["vision"], dtype, cfg.model.trust_remote_code, kind).to(device)
    connector = connector_from_config(meta["connector"]).to(device)
    connector.load_state_dict(weights)
    data = prepare_data(cfg, backbone.tokenizer, cfg.output_dir)
    return LoadedCheckpoint(cfg, meta["step"], backbone, connector, data, device, dtype)


def eval_dataset(lc: LoadedCheckpoint) -> CaptionDataset:
    b, d = lc.backbone, lc.data
    return CaptionDataset(d.samples, d.metas, d.split.eval, b.tokenizer, b.image_processor, d.image_root,
                          b.image_token_id, lc.cfg.model.num_latents, lc.cfg.data.max_seq_len,
                          pixel_dtype=b.tower_dtype, boundary_token_id=b.boundary_token_id)


def ablation_batches(lc: LoadedCheckpoint) -> list[list[int]]:
    e = lc.cfg.eval
    return chunks(seeded_subset(list(range(len(lc.data.split.eval))), e.ablation_samples, e.ablation_seed),
                  e.batch_size)
