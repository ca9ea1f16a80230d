"""Connector-only, self-describing checkpoints, written atomically (a temp folder, then one rename):

    checkpoints/step_{k}/connector.safetensors   weights
    checkpoints/step_{k}/connector.json          connector config + the towers it belongs to
    checkpoints/step_{k}/trainer_state.pt        optimizer, scheduler, RNG, step, global sample index
"""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

import vlmtrack


def checkpoint_dir(out_dir: Path, step: int) -> Path:
    return out_dir / "checkpoints" / f"step_{step}"


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(out_dir: Path, step: int, connector, optimizer, scheduler, trainer_state: dict,
                    towers: dict) -> Path:
    final = checkpoint_dir(out_dir, step)
    tmp = final.parent / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = {k: v.detach().to("cpu").contiguous() for k, v in connector.state_dict().items()}
    save_file(weights, str(tmp / "connector.safetensors"), metadata={"format": "pt", "step": str(step)})
    meta = {"connector": connector.config, "step": step, "vlmtrack_version": vlmtrack.__version__, **towers}
    (tmp / "connector.json").write_text(json.dumps(meta, indent=1))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state(),
                **trainer_state}, tmp / "trainer_state.pt")
    if final.exists():  # a re-run of the same step after a resume: replace it whole
        shutil.rmtree(final)
    tmp.rename(final)
    return final


def load_connector_weights(path: Path) -> tuple[dict, dict]:
    """(state dict, connector.json) of a checkpoint folder."""
    if not (path / "connector.safetensors").exists():
        raise FileNotFoundError(f"'{path}' is not a connector checkpoint (no connector.safetensors)")
    return load_file(str(path / "connector.safetensors")), json.loads((path / "connector.json").read_text())


def load_trainer_state(path: Path) -> dict:
    return torch.load(path / "trainer_state.pt", weights_only=True)  # no pickled code from a checkpoint


def latest_checkpoint(out_dir: Path) -> Path | None:
    found = sorted((p for p in (out_dir / "checkpoints").glob("step_*") if p.is_dir()),
                   key=lambda p: int(p.name.split("_")[1]))
    return found[-1] if found else None
