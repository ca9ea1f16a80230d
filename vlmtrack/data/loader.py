"""Which samples form which batch, in which order, and the loaders that decode them: training batches by
epoch (seeded, resumable, sliced across ranks), eval batches in chunks, and the workers sized to the machine."""
from __future__ import annotations

import functools
import itertools
import math
import os
import random

import torch

from vlmtrack.data.dataset import CaptionDataset, collate, join_batches
from vlmtrack.runtime import distributed as dist


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


def epoch_batches(order: list[int], batch_size: int, lengths: list[int] | None, seed: int, epoch: int) -> list[list[int]]:
    """An epoch's batches. With `lengths`, samples are sorted by length within windows of 64 batches (so
    a batch pads little) and the batches of a window shuffled: still a function of (seed, epoch) only."""
    steps = len(order) // batch_size
    if lengths is None:
        return [order[i * batch_size:(i + 1) * batch_size] for i in range(steps)]
    rng = random.Random(seed * 1_000_003 + epoch)
    out, window = [], 64 * batch_size
    for start in range(0, steps * batch_size, window):
        chunk = sorted(order[start:min(start + window, steps * batch_size)], key=lambda i: lengths[i])
        group = [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
        rng.shuffle(group)
        out += group
    return out


def rank_slice(batch: list[int], rank: int, world: int) -> list[int]:
    """This rank's contiguous share of a global batch (sizes differ by at most one)."""
    n = len(batch)
    return batch[rank * n // world:(rank + 1) * n // world]


def rank_shard(batches: list[list[int]], rank: int, world: int) -> list[list[int]]:
    """Whole eval batches dealt round-robin: a batch is the same on any number of ranks, so are its losses."""
    return batches[rank::world]


def train_batches(dataset: CaptionDataset, batch_size: int, seed: int, start_step: int, pad_id: int,
                  num_workers: int, pin: bool = False, lengths: list[int] | None = None,
                  rank: int = 0, world: int = 1, stop_step: int | None = None):
    """Batches from step `start_step` up to `stop_step` (None: forever); an epoch is num_train // batch_size
    steps. One loader serves every epoch, so its workers are started once, not at each epoch boundary (a
    small split at a large batch has an epoch every few steps). A loader that knows its last batch goes
    idle once that is decoded: one that reads on keeps its workers decoding batches nobody takes while
    the run's last eval and golden dump need the cores. With several ranks, each reads its slice of every
    global batch: the global batches and steps are those of one rank, so a resume may change the rank count."""
    steps_per_epoch = len(dataset) // batch_size
    first_epoch, offset = divmod(start_step, steps_per_epoch)

    def order():
        for epoch in itertools.count(first_epoch):
            batches = epoch_batches(epoch_order(len(dataset), seed, epoch), batch_size, lengths, seed, epoch)
            for batch in batches[offset if epoch == first_epoch else 0:]:
                yield rank_slice(batch, rank, world)

    planned = order() if stop_step is None else itertools.islice(order(), max(0, stop_step - start_step))
    return iter(loader(dataset, planned, pad_id, num_workers, pin, -(-batch_size // world)))


def data_workers(setting: int, device: torch.device) -> int:
    """-1 = sized to the machine: on CUDA every core but the one driving the GPU (at most 12; the cores
    shared among the ranks of a torchrun host); on CPU none, since the training threads need the cores
    and decoding in the main process costs less than a worker."""
    if setting >= 0:
        return setting
    cores = (os.cpu_count() or 1) // dist.world_size()
    return min(12, max(0, cores - 1)) if device.type == "cuda" else 0


# Batches the workers hold ready, at most this many bytes of them: each one in flight is in shared memory,
# and once more in pinned memory, and every new pinned block is a cudaHostAlloc that stalls the training
# thread's launches. H200, large preset, batch 256 cached (430 MB a batch): 14 workers x prefetch 4 had
# 56 batches in flight, and steps 5-12 took 0.9-1.6 s against 0.42 s once the pinned blocks were cached.
IN_FLIGHT_BYTES = 4 * 2**30
MAX_PREFETCH = 4


def loader_sizing(num_workers: int, batch_bytes: int) -> tuple[int, int]:
    """(workers, prefetch per worker) for batches of `batch_bytes` (0 = unknown: no cap), keeping
    workers x prefetch batches under IN_FLIGHT_BYTES but never fewer than two batches in flight."""
    if num_workers == 0 or batch_bytes <= 0:
        return num_workers, MAX_PREFETCH
    slots = max(2, IN_FLIGHT_BYTES // batch_bytes)
    workers = min(num_workers, slots)
    return workers, max(1, min(MAX_PREFETCH, slots // workers))


def loader(dataset: CaptionDataset, batches, pad_id: int, num_workers: int, pin: bool = False,
           batch_size: int = 0, pieces: int = 1, persistent: bool = False):
    """Batches in the given order; workers decode ahead (prefetch) into pinned memory on CUDA, as many
    batches ahead as loader_sizing allows for `batch_size` samples a batch (0: the full prefetch).
    With `pieces` > 1 (a list of batches), each batch is loaded as that many pieces, by as many workers
    at once, and joined again in order: the same batches, the first of them sooner. Neither the pieces nor
    the joined batches are pinned: that would copy every batch twice more on the main thread, which feeds
    the GPU. With `persistent` (a list of batches, loaded again and again: an eval), the loader is iterated
    once per pass and its workers stay up between passes instead of being forked anew each time."""
    if pieces > 1:
        split = [chunks(b, -(-len(b) // pieces)) for b in batches]
        parts = loader(dataset, [p for s in split for p in s], pad_id, num_workers, False,
                       -(-batch_size // pieces), persistent=persistent)
        return JoinedPieces(parts, [len(s) for s in split], pad_id)
    workers, prefetch = loader_sizing(num_workers, batch_size * dataset.vision_bytes())
    if isinstance(batches, list):  # no worker without a batch to load: each one forked costs the main process
        workers = min(workers, len(batches))
    extra = {"prefetch_factor": prefetch} if workers > 0 else {}
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=workers,
                                       collate_fn=functools.partial(collate, pad_id=pad_id),
                                       persistent_workers=persistent and workers > 0, pin_memory=pin, **extra)


class JoinedPieces:
    """Each batch joined from its consecutive pieces (`counts[i]` of them), in order; iterable once per pass
    over the loader of pieces under it."""

    def __init__(self, parts, counts: list[int], pad_id: int):
        self.parts, self.counts, self.pad_id = parts, counts, pad_id

    def __iter__(self):
        parts = iter(self.parts)
        return (join_batches([next(parts) for _ in range(n)], self.pad_id) for n in self.counts)

    def __len__(self) -> int:
        return len(self.counts)


def eval_pieces(batch_size: int, num_workers: int, decodes_images: bool) -> int:
    """How many pieces an eval loader splits a batch into: where workers decode JPEGs, one worker decoding a
    whole eval batch alone kept the GPU waiting for it (~1.7 s for 256 at the start of every full eval,
    H200, small preset); pieces of 32 go to several workers at once. Cached features load fast whole."""
    if not decodes_images or num_workers < 2:
        return 1
    return max(1, min(num_workers, batch_size // 32))
