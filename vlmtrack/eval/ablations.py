"""Vision ablations (spec 4.3): the loss with correct, shuffled, zero and noise vision features on the
same eval items, the deltas, and which parts of the expected order correct < shuffled < zero < noise hold."""
from __future__ import annotations

import torch

from vlmtrack.eval.evaluate import evaluate_modes
from vlmtrack.model.backbone import VISION_MODES


def ablation_metrics(losses: dict[str, float]) -> dict[str, float]:
    c = losses["correct"]
    out = {f"ablation_loss_{m}": losses[m] for m in VISION_MODES}
    out.update({"delta_shuffle": losses["shuffled"] - c, "delta_zero": losses["zero"] - c,
                "delta_noise": losses["noise"] - c})
    pairs = list(zip(VISION_MODES, VISION_MODES[1:]))
    for a, b in pairs:
        out[f"ablation_{a}_lt_{b}"] = float(losses[a] < losses[b])
    out["ablation_order_ok"] = float(all(losses[a] < losses[b] for a, b in pairs))
    return out


def order_text(metrics: dict[str, float]) -> str:
    """Which parts of the spec's order hold, in words: `ablation_order_ok=0` alone read as a broken product
    where only one comparison failed (the embedded demo's tiny LM reads noise as some picture: noise < zero)."""
    pairs = list(zip(VISION_MODES, VISION_MODES[1:]))
    failed = [f"{a} < {b}" for a, b in pairs if not metrics.get(f"ablation_{a}_lt_{b}")]
    if not failed:
        return f"{' < '.join(VISION_MODES)}: holds"
    return f"{' < '.join(VISION_MODES)}: {', '.join(failed)} does not hold (ablation_order_ok=0)"


def run_ablations(backbone, connectors: list, batches, device: torch.device, dtype: torch.dtype,
                  seed: int) -> list[dict[str, float]]:
    """One result dict per connector, from one pass over the ablation batches, every mode on each batch
    (under torchrun, this rank's shard of them: the ranks' token sums are added up before the means)."""
    per_mode = evaluate_modes(backbone, connectors, batches, device, dtype, VISION_MODES, seed)
    return [ablation_metrics({m: per_mode[m][k].metrics()["eval_loss"] for m in VISION_MODES})
            for k in range(len(connectors))]
