"""The parts a run is built from: device and precision, datasets and the order batches come in."""
from __future__ import annotations

import functools
import math
import os
import random
from pathlib import Path

import torch

from vlmtrack.config import Config, ConfigError
from vlmtrack.data.dataset import CaptionDataset, collate


def device_and_dtype(cfg: Config) -> tuple[torch.device, torch.dtype]:
    t = cfg.train
    name = t.device if t.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    precision = t.precision if t.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    return device, torch.bfloat16 if precision == "bf16" else torch.float32


def check_writable(out_dir: Path) -> None:
    """Fails before any training if the output directory cannot take files."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-probe-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"output directory '{out_dir}' is not writable ({e.strerror}): set train.output_dir") from None


def chunks(positions: list[int], size: int) -> list[list[int]]:
    """Near-equal consecutive chunks of at most `size`: no trailing batch of one (a derangement needs two)."""
    n = math.ceil(len(positions) / size)
    bounds = [round(i * len(positions) / n) for i in range(n + 1)]
    return [positions[a:b] for a, b in zip(bounds, bounds[1:])]


def seeded_subset(positions: list[int], n: int, seed: int) -> list[int]:
    if n >= len(positions):
        return list(positions)
    return sorted(random.Random(seed).sample(positions, n))


def epoch_order(num_train: int, seed: int, epoch: int) -> list[int]:
    """The order of the train split in one epoch: a function of (seed, epoch) only, so a resumed run
    (on any number of ranks) finds its place from the global sample index alone."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_train, generator=g).tolist()


def train_batches(dataset: CaptionDataset, batch_size: int, seed: int, start_step: int, pad_id: int,
                  num_workers: int):
    """Yields batches forever from step `start_step` on; an epoch is num_train // batch_size steps."""
    steps_per_epoch = len(dataset) // batch_size
    epoch, offset = divmod(start_step, steps_per_epoch)
    while True:
        order = epoch_order(len(dataset), seed, epoch)
        batches = [order[i * batch_size:(i + 1) * batch_size] for i in range(offset, steps_per_epoch)]
        yield from loader(dataset, batches, pad_id, num_workers)
        epoch, offset = epoch + 1, 0


def loader(dataset: CaptionDataset, batches: list[list[int]], pad_id: int, num_workers: int):
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=num_workers,
                                       collate_fn=functools.partial(collate, pad_id=pad_id),
                                       persistent_workers=False)


def lr_lambda(warmup: int, total: int, schedule: str):
    def f(update: int) -> float:
        if warmup and update < warmup:
            return (update + 1) / warmup
        if schedule == "cosine":
            progress = (update - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0
    return f
