"""Connector-only, self-describing checkpoints, written atomically (a temp folder, then one rename; a
failed write, e.g. a full disk, removes the temp folder and leaves earlier checkpoints as they were), and
read back to resume. The layout is model/connector_io.py's; the trainer state (optimizer, scheduler, RNG,
step, global sample index) is training's own."""
from __future__ import annotations

import errno
import json
import random
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

import vlmtrack
from vlmtrack.model.connector_io import (META_FILE, TRAINER_STATE_FILE, WEIGHTS_FILE, best_checkpoint,
                                         checkpoint_dir, latest_checkpoint, load_connector_weights, run_dir_of)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        # a run may resume on a host (or rank) that sees fewer GPUs than the one that saved
        torch.cuda.set_rng_state_all(state["cuda"][:torch.cuda.device_count()])


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; earlier checkpoints are untouched."""

    def __str__(self) -> str:
        return self.strerror


def save_checkpoint(out_dir: Path, step: int, connector, optimizer, scheduler, trainer_state: dict,
                    towers: dict) -> Path:
    final = checkpoint_dir(out_dir, step)
    tmp = final.parent / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    writing = tmp
    try:
        tmp.mkdir(parents=True)
        weights = {k: v.detach().to("cpu").contiguous() for k, v in connector.state_dict().items()}
        writing = tmp / WEIGHTS_FILE
        save_file(weights, str(writing), metadata={"format": "pt", "step": str(step)})
        meta = {"connector": connector.config, "step": step, "vlmtrack_version": vlmtrack.__version__, **towers}
        writing = tmp / META_FILE
        writing.write_text(json.dumps(meta, indent=1))
        writing = tmp / TRAINER_STATE_FILE
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state(),
                    **trainer_state}, writing)
    except Exception as e:
        full = disk_full(e, tmp.parent)  # asked before the clean-up gives the space back
        shutil.rmtree(tmp, ignore_errors=True)  # nothing half-written stays, not even in the temp folder
        if full or isinstance(e, OSError):
            raise write_error(final, writing.name, e, full) from e
        raise
    if final.exists():  # a re-run of the same step after a resume: swap, so a crash keeps one whole copy
        old = final.parent / f".{final.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)
    return final


FULL_BELOW_BYTES = 2**20


def disk_full(e: Exception, where: Path) -> bool:
    """A full disk reaches us as OSError 28 from Python's writes, as a SafetensorError naming os error 28
    from safetensors, and from torch.save as a RuntimeError about an "unexpected pos": so the errno, the
    text, and last the disk itself (next to nothing free while the partial files still hold it)."""
    if getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        return True
    if any(s in str(e) for s in ("No space left on device", "os error 28", "Disk quota exceeded")):
        return True
    try:
        return shutil.disk_usage(where).free < FULL_BELOW_BYTES
    except OSError:
        return False


def write_error(final: Path, file: str, e: Exception, full: bool) -> CheckpointWriteError:
    """One message: which checkpoint, why, what to do, and what is still there to resume from."""
    previous = latest_checkpoint(run_dir_of(final))
    kept = (f"the previous checkpoint {previous} is intact (train.resume_from=latest resumes from it)"
            if previous else "no earlier checkpoint exists")
    if full:
        cause, fix = "no space left on the device", "Free space there or set train.output_dir to a disk with room"
    else:
        cause = getattr(e, "strerror", None) or (str(e).splitlines() or [type(e).__name__])[0]
        fix = "Check that train.output_dir is writable, or set it to another directory"
    code = errno.ENOSPC if full else (getattr(e, "errno", None) or errno.EIO)
    return CheckpointWriteError(code, f"cannot write checkpoint {final} ({file}): {cause}. {fix}; {kept}.")


def load_trainer_state(path: Path) -> dict:
    state = torch.load(path / TRAINER_STATE_FILE, weights_only=True)  # no pickled code from a checkpoint
    state["timing"] = unpacked_timing(state.get("timing", {}))
    return state


def packed_timing(timing: dict[str, list[float]]) -> dict[str, torch.Tensor]:
    """The run's timings (a value per step, eval or dump) as float32 tensors for a checkpoint: at the full
    run's 556K steps the lists of Python floats took 0.24 s and 10 MB to pickle at every save, growing with
    the run (2.8 GB written over its ~556 saves); tensors take milliseconds and 4.4 MB at the end."""
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in timing.items()}


def unpacked_timing(timing: dict) -> dict[str, list[float]]:
    """The loop's lists again, from packed tensors or from a checkpoint written before they were packed."""
    return {k: v.tolist() if isinstance(v, torch.Tensor) else list(v) for k, v in timing.items()}


def resume_path(out_dir: Path, given: str) -> Path:
    """The checkpoint train.resume_from names: `latest` in the output dir, or a folder."""
    path = latest_checkpoint(out_dir) if given == "latest" else Path(given)
    if path is None or not (path / TRAINER_STATE_FILE).exists():
        raise FileNotFoundError(f"train.resume_from={given!r}: no checkpoint found (looked in {out_dir})")
    return path


def restore_trial(trial, path: Path) -> dict:
    """Puts the checkpoint's weights, optimizer, schedule, evals and RNG back into the trial; returns the
    trainer state (step, timing)."""
    weights, _ = load_connector_weights(path)
    trial.connector.load_state_dict(weights)
    state = load_trainer_state(path)
    trial.optimizer.load_state_dict(state["optimizer"])
    trial.scheduler.load_state_dict(state["scheduler"])
    trial.evals = state["evals"]
    trial.checkpoints = state.get("checkpoints", [])  # a checkpoint saved before retention lists none
    restore_rng(state["rng"])
    return state


def checkpoints_to_drop(written: list[int], evals: list[dict], keep: int) -> list[int]:
    """Of the checkpoint steps this run wrote (oldest first), those train.keep_checkpoints lets go: all but
    the `keep` newest and the one with the best full-eval loss among those that have one (0 keeps all)."""
    if keep <= 0:
        return []
    kept = set(written[-keep:])
    if best := best_checkpoint(written, evals):
        kept.add(best[0])
    return [s for s in written if s not in kept]
