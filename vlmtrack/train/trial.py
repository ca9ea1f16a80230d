"""What belongs to one connector alone (a trial: its config, tracker, weights, optimizer, evals), and what
trials trained side by side may differ in: everything else is shared by construction."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from vlmtrack.config import SWEEP_AXIS_KEYS, Config, flatten
from vlmtrack.model.connector import Connector
from vlmtrack.tracking.base import Tracker
from vlmtrack.tracking.golden_tables import GoldenTables


class NonFiniteLossError(RuntimeError):
    pass


@dataclass
class Trial:
    cfg: Config
    tracker: Tracker
    connector: Connector | None = None
    optimizer: torch.optim.Optimizer | None = None
    scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
    evals: list[dict] = field(default_factory=list)
    failed: str | None = None
    expected_hashes: tuple[str, str] | None = None  # (eval split, golden set) a sweep pins for all trials
    train_forward: object = None  # the connector as the training step calls it (compiled under train.compile)
    golden_tables: GoldenTables = field(default_factory=GoldenTables)
    # the checkpoints this training wrote and still keeps, oldest first: {"step", "run_id"} (the MLflow run
    # that holds its artifacts: a resumed training is a new run); retention removes from these alone
    checkpoints: list[dict] = field(default_factory=list)
    # told each quick-eval loss and its step (a sweep reports them to Optuna: its learning curves); the
    # loop knows nothing of who listens
    on_quick_eval: Callable[[float, int], None] | None = None

    @property
    def out_dir(self) -> Path:
        return self.cfg.output_dir

    @property
    def name(self) -> str:
        return self.cfg.train.run_name


# the sweep's axes, and what makes each trial a run of its own
PER_TRIAL_KEYS = SWEEP_AXIS_KEYS | {"train.weight_decay", "train.run_name", "train.output_dir"}


def check_shareable(trials: list[Trial]) -> None:
    base = flatten(trials[0].cfg)
    for tr in trials[1:]:
        other = flatten(tr.cfg)
        diff = [k for k in base if k not in PER_TRIAL_KEYS and base[k] != other[k]]
        if diff:
            raise ValueError(f"trials {trials[0].name} and {tr.name} differ in "
                             f"{diff}: only {sorted(PER_TRIAL_KEYS)} may differ side by side")
    dirs = [tr.out_dir.resolve() for tr in trials]
    if len(set(dirs)) != len(dirs):
        raise ValueError("two trials share an output directory: each needs its own train.output_dir")
