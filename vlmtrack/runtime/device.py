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
    """bf16 autocast wherever the run is bf16: the towers are loaded in bf16 and the connector's weights
    stay fp32, so on a CPU asked for bf16 (train.precision=bf16, as the spec's configs say) the two meet
    only through autocast; without it the first matmul failed on mixed dtypes."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
