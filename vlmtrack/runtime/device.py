"""Where a run computes and in which precision: one answer for training, eval and generation."""
from __future__ import annotations

import torch

from vlmtrack.config import Config
from vlmtrack.runtime import distributed as dist


def device_and_dtype(cfg: Config) -> tuple[torch.device, torch.dtype]:
    t = cfg.train
    name = t.device if t.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    device = dist.device_for(name)
    precision = t.precision if t.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    return device, torch.bfloat16 if precision == "bf16" else torch.float32


def autocast(device: torch.device, dtype: torch.dtype):
    enabled = device.type == "cuda" and dtype != torch.float32
    return torch.autocast(device.type, dtype=dtype, enabled=enabled)
