"""The training loop, top to bottom. It trains a *set* of connectors over one frozen backbone (a single run
is a set of one): vision features once per batch, the LLM once over the stacked sequences; losses,
optimizers, checkpoints and output directories per trial. The loop returns each trial's outcome and never
finishes a tracker: its callers do, on every path."""
from __future__ import annotations

import time
from typing import Callable

from vlmtrack.config import Config
from vlmtrack.tracking.base import Tracker
from vlmtrack.train.actions import (drop_nonfinite, full_eval, golden, log_epoch_data, log_progress, log_train,
                                    progress_bar, save)
from vlmtrack.train.outcome import Scorer, trial_outcomes
from vlmtrack.train.schedule import due_at
from vlmtrack.train.setup import Run, release, set_up_run
from vlmtrack.train.step import Stepper
from vlmtrack.train.trial import NonFiniteLossError, Trial

__all__ = ["NonFiniteLossError", "Trial", "train", "train_trials"]


def train(cfg: Config, tracker: Tracker, log=print, score: Scorer | None = None) -> dict:
    """One run: a set of one trial. A non-finite loss raises NonFiniteLossError."""
    return train_trials([Trial(cfg, tracker)], log, score=score)[0]


def train_trials(trials: list[Trial], log=print, score: Scorer | None = None,
                 on_trial_failed: Callable[[Trial], None] | None = None) -> list[dict]:
    """Trains the trials side by side and returns their outcomes, in order. A trial whose loss turns
    non-finite leaves at the next log or save, and `on_trial_failed(trial)` is told at once; when no trial
    is left, NonFiniteLossError. `score(outcome, cfg)` adds each finished trial's score."""
    t_setup = time.perf_counter()
    run = set_up_run(trials, log)
    run.wall["startup_s"] = time.perf_counter() - t_setup
    try:
        return _train(run, on_trial_failed, score)
    finally:
        release(run)


def _train(run: Run, on_trial_failed, score: Scorer | None) -> list[dict]:
    steps, bar = Stepper(run), progress_bar(run)
    step, t_start = run.start_step, time.perf_counter()
    while step < run.total_steps:
        prev, step = step, steps.step(step)
        due = due_at(prev, step, run.total_steps, run.steps_per_epoch, run.cfg.train)
        if bar:
            bar.update(step - prev)
        if due.log:
            drop_nonfinite(run, steps.window, step, on_trial_failed)
            log_train(run, steps.window, step)
        if due.progress:
            log_progress(run, step, time.perf_counter() - t_start)
        if due.epoch_end:
            log_epoch_data(run, steps.window, step)
        if due.quick_eval:
            full_eval(run, step, run.quick_batches, "quick_eval")
        if due.full_eval:
            full_eval(run, step, run.eval_batches)
        if due.save or due.golden:
            drop_nonfinite(run, steps.window, step, on_trial_failed)
        if due.golden:  # before the save: a run killed between the two dumps this step again on resume
            golden(run, step)
        if due.save:
            save(run, step)
    run.wall["loop_s"] = time.perf_counter() - t_start  # the first step to the last one's eval, golden and save
    if bar:
        bar.close()
    return trial_outcomes(run, step, steps.batches.bad_samples, score)
