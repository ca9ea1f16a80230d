"""Where a run's connector checkpoints live and how one is read back. The one owner of the layout:

    <output_dir>/checkpoints/step_{k}/connector.safetensors   weights
    <output_dir>/checkpoints/step_{k}/connector.json          connector config + the towers it belongs to
    <output_dir>/checkpoints/step_{k}/trainer_state.pt        optimizer, scheduler, RNG, step (training's own)

The same `checkpoints/step_{k}` path names a checkpoint among a run's MLflow artifacts."""
from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file

from vlmtrack.config import RESAMPLER

CHECKPOINTS = "checkpoints"
WEIGHTS_FILE = "connector.safetensors"
META_FILE = "connector.json"
TRAINER_STATE_FILE = "trainer_state.pt"


def checkpoint_name(step: int) -> str:
    """`checkpoints/step_{k}`: the checkpoint's folder below the output dir, and its artifact path."""
    return f"{CHECKPOINTS}/step_{step}"


def checkpoint_dir(out_dir: Path, step: int) -> Path:
    return out_dir / checkpoint_name(step)


def checkpoint_step(folder: Path) -> int:
    return int(folder.name.split("_")[1])


def run_dir_of(folder: Path) -> Path:
    """The output dir a checkpoint folder belongs to (its config.yaml lies there)."""
    return folder.parent.parent


def latest_checkpoint(out_dir: Path) -> Path | None:
    found = sorted((p for p in (out_dir / CHECKPOINTS).glob("step_*") if p.is_dir()), key=checkpoint_step)
    return found[-1] if found else None


def best_checkpoint(written: list[int], evals: list[dict]) -> tuple[int, float] | None:
    """(step, eval_loss) of the written checkpoint with the best full-eval loss (the newer of equals): the one
    retention always keeps (train/checkpoint.py) and promotion picks from a run (tracking/promote.py)."""
    loss_at = {e["step"]: e["eval_loss"] for e in evals if "eval_loss" in e}
    scored = [s for s in written if s in loss_at]
    if not scored:
        return None
    best = min(scored, key=lambda s: (loss_at[s], -s))
    return best, loss_at[best]


def load_connector_weights(path: Path) -> tuple[dict, dict]:
    """(state dict, connector.json) of a checkpoint folder."""
    if not (path / WEIGHTS_FILE).exists():
        raise FileNotFoundError(f"'{path}' is not a connector checkpoint (no {WEIGHTS_FILE})")
    return load_file(str(path / WEIGHTS_FILE)), json.loads((path / META_FILE).read_text())


def connector_kind(connector_config: dict) -> str:
    """model.connector of a checkpoint's connector.json `connector`: checkpoints from before there was a
    choice name none and hold the resampler."""
    return connector_config.get("kind", RESAMPLER)


def tower_reference(name_or_path: str) -> str:
    """How a checkpoint names a frozen tower so that it loads from any folder: a local model folder by its
    absolute path (a relative one, such as the demo's data/demo/..., broke `vlmtrack ablate` elsewhere), a
    hub id as it is."""
    path = Path(name_or_path).expanduser()
    return str(path.resolve()) if path.exists() else name_or_path
