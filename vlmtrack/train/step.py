"""One training step: the next global batches (undecodable images skipped and listed), each micro-batch's
forward and backward (replayed from a CUDA graph where that pays), the gradients summed over ranks, and one
optimizer update of every active connector. What the steps add up to waits on the device in a `Window`
until the loop reads it at a log."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from vlmtrack.data.loader import train_batches
from vlmtrack.data.pipeline import BAD_SAMPLES
from vlmtrack.files import write_jsonl
from vlmtrack.model.connector import visual_length
from vlmtrack.model.forward import batch_losses
from vlmtrack.runtime import distributed as dist
from vlmtrack.runtime.device import autocast
from vlmtrack.train.graphed import GraphedSteps
from vlmtrack.train.setup import Run, take_finished_cache

SANITY_KEYS = ("n", "truncated", "label_zero", "label_tokens")


@dataclass
class Window:
    """Per active trial, on the device (the host reads it only at a log): the summed loss since the last
    log and whether any loss was non-finite; and the samples' data sanity since the epoch began."""
    loss: torch.Tensor
    nonfinite: torch.Tensor
    tokens: int = 0
    sanity: dict = field(default_factory=lambda: dict.fromkeys(SANITY_KEYS, 0))
    t_log: float = field(default_factory=time.perf_counter)
    step_log: int = 0

    @classmethod
    def for_trials(cls, n: int, device: torch.device, step: int) -> Window:
        return cls(torch.zeros(n, device=device), torch.zeros(n, dtype=torch.bool, device=device), step_log=step)

    def add(self, losses: torch.Tensor, b) -> None:
        self.nonfinite |= ~torch.isfinite(losses)
        self.loss += losses.float()
        self.sanity["n"] += len(b)
        self.sanity["truncated"] += int(b.truncated.sum())
        self.sanity["label_zero"] += int((b.num_supervised <= 1).sum())
        self.sanity["label_tokens"] += int(b.label_len.sum())

    def keep(self, kept: list[bool]) -> None:
        """Only the trials still training (a non-finite loss dropped the others)."""
        index = torch.tensor(kept, device=self.loss.device)
        self.loss, self.nonfinite = self.loss[index], self.nonfinite[index]


class TrainBatches:
    """The run's global batches from its start step on, each with at least one sample (this rank's slice of
    it may be empty) and its global count of supervised tokens. Undecodable images are skipped, written to
    each trial's bad_samples.jsonl and counted in `data_bad_images`."""

    def __init__(self, run: Run):
        self.run, self.drawn, self.bad_samples = run, run.start_step, []
        split, metas = run.data.split.train, run.data.metas
        self.lengths = [metas[i].label_len for i in split] if run.cfg.data.group_by_length else None
        self._batches = self._from(run.start_step, run.start_step)

    def _from(self, start: int, step: int):
        """Batches from `start` up to the run's last step: the loader's workers then go idle."""
        r, t = self.run, self.run.cfg.train
        return train_batches(r.train_set, t.batch_size, t.seed, start, r.backbone.pad_id, r.workers, r.pin,
                             self.lengths, dist.rank(), dist.world_size(), stop_step=start + r.total_steps - step)

    def restart(self, step: int) -> None:
        """A new loader from the next batch on (the sets changed how they read images); the old one's
        workers stop with it."""
        self._batches = self._from(self.drawn, step)

    def next(self, step: int):
        while True:
            try:
                b = next(self._batches)
            except StopIteration:  # whole batches were skipped: read on past the planned last one
                self._batches = self._from(self.drawn, step)
                b = next(self._batches)
            self.drawn += 1
            n, tokens, n_skipped = dist.all_reduce_sums([len(b), int(b.num_supervised.sum()), len(b.skipped)])
            if n_skipped:
                self._note_skipped(b, step)
            if n:
                return b, int(tokens)

    def _note_skipped(self, b, step: int) -> None:
        skipped = [s for part in dist.gather_objects(b.skipped) for s in part]
        self.bad_samples.extend(skipped)
        for tr in self.run.active:
            tr.tracker.log_metrics({"data_bad_images": len(self.bad_samples)}, step)
            if self.run.main:
                write_jsonl(tr.out_dir / BAD_SAMPLES, self.bad_samples)
        reasons = "; ".join(f"id={s['id']}: {s['reason']}" for s in skipped)
        self.run.log(f"[data] skipped {len(skipped)} sample(s) whose image cannot be used, "
                     f"{len(self.bad_samples)} so far: {reasons}")


class Stepper:
    """Takes the run's steps: the batch stream, the CUDA graphs once captured, and the window they fill."""

    def __init__(self, run: Run):
        self.run = run
        self.batches = TrainBatches(run)
        self.window = Window.for_trials(len(run.active), run.device, run.start_step)
        self.graphs: GraphedSteps | None = None

    def step(self, step: int) -> int:
        """One optimizer update over train.gradient_accum micro-batches; returns the step reached."""
        run, t = self.run, self.run.cfg.train
        if run.cache_build is not None and take_finished_cache(run, step):
            self.batches.restart(step)
            self.graphs = None  # the live tower's captures go: cached batches are captured anew
        t0 = time.perf_counter()
        n_micro = min(t.gradient_accum, run.total_steps - step)
        window, counts = zip(*[self.batches.next(step) for _ in range(n_micro)])
        t_data = time.perf_counter() - t0
        tokens = sum(counts)  # global: each rank's gradient is its share of the 1-rank gradient
        for b in window:
            if len(b):
                self.window.add(self.micro_step(b, tokens), b)
        self.window.tokens += tokens
        dist.sum_gradients(run.connectors())
        for tr in run.active:
            torch.nn.utils.clip_grad_norm_(tr.connector.parameters(), tr.cfg.train.max_grad_norm)
            tr.optimizer.step()
            tr.scheduler.step()
            tr.optimizer.zero_grad(set_to_none=self.graphs is None)  # a graph adds into the same .grad tensors
        run.timing["step_s"].append(time.perf_counter() - t0)
        run.timing["data_wait_s"].append(t_data)
        return step + n_micro

    def micro_step(self, b, tokens: int) -> torch.Tensor:
        """Adds the micro-batch's gradients, scaled by 1/tokens, and returns each connector's summed loss
        [K]: replayed from a CUDA graph where that pays (train.cuda_graphs), else eagerly."""
        run = self.run
        if run.graphs_on and not (self.graphs and self.graphs.failed):
            if self.graphs is None or not self.graphs.serves(run.connectors()):  # the first step, or a trial failed
                self.graphs = GraphedSteps(run.backbone, run.connectors(), run.dtype, visual_length(run.cfg.model),
                                           run.log)
            losses = self.graphs.step(b, tokens)
            if losses is not None:
                return losses
        b.to(run.device)
        with autocast(run.device, run.dtype):
            losses = batch_losses(run.backbone, [tr.train_forward for tr in run.active], b).sum(1)  # [K]
        (losses / max(tokens, 1)).sum().backward()
        return losses.detach()
