"""What is due after a step: a pure function of the step just taken and the train config, so that the
loop reads as a list of actions and the schedule is tested on its own."""
from __future__ import annotations

from dataclasses import dataclass

from vlmtrack.config import TrainConfig


@dataclass(frozen=True)
class Due:
    log: bool = False  # train loss, lr, samples/s (and the non-finite check)
    progress: bool = False  # the console's progress line, every train.progress_percent of the run
    epoch_end: bool = False  # the epoch's data-sanity metrics
    quick_eval: bool = False
    full_eval: bool = False
    golden: bool = False  # golden captions (after the non-finite check)
    save: bool = False  # a checkpoint (after the golden captions of its step)


def crossed(prev: int, now: int, every: int) -> bool:
    """A multiple of `every` lies in (prev, now]: with gradient accumulation a step may jump over it."""
    return every > 0 and prev // every != now // every


def progress_every(total_steps: int, progress_percent: float) -> int:
    """Steps between progress lines; train.progress_percent is a fraction of the run (0.1: every 10%)."""
    return max(1, round(total_steps * progress_percent))


def due_at(prev: int, step: int, total_steps: int, steps_per_epoch: int, t: TrainConfig) -> Due:
    """The actions due once the run has gone from step `prev` to `step`, in the order the loop takes them."""
    last = step == total_steps
    epoch_end = crossed(prev, step, steps_per_epoch)
    eval_every = int(t.full_eval_every) if t.full_eval_every.isdigit() else 0
    save = crossed(prev, step, t.save_every) or last
    return Due(
        log=crossed(prev, step, t.log_every) or last,
        progress=crossed(prev, step, progress_every(total_steps, t.progress_percent)) or last,
        epoch_end=epoch_end,
        quick_eval=bool(t.quick_eval_steps) and crossed(prev, step, t.quick_eval_steps) and not last,
        full_eval=((epoch_end and t.full_eval_every == "epoch") or crossed(prev, step, eval_every)
                   or any(prev < s <= step for s in t.eval_at_steps) or last),
        golden=((save and t.run_golden_every == "save") or (epoch_end and t.run_golden_every == "epoch")
                or (last and t.run_golden_every != "never")),
        save=save,
    )
