"""The sweep's objective (spec 4), minimised: eval_loss_end - w * (Δshuffle + Δzero), w = sweep.score_weight.
A connector that reads the picture has a low loss and loses much when the picture is shuffled or zeroed."""
from __future__ import annotations

from vlmtrack.config import Config


def composite_score(outcome: dict, cfg: Config) -> float | None:
    """The score of a finished run's outcome; None when it has no final eval or no ablations."""
    final, abl = outcome.get("final_eval"), outcome.get("ablations")
    if not final or not abl:
        return None
    return final["eval_loss"] - cfg.sweep.score_weight * (abl["delta_shuffle"] + abl["delta_zero"])
