"""Token-weighted eval (spec 2): every aggregate is Σ loss / Σ tokens of per-sample sums, overall and
per bucket, never a mean of batch means. One pass serves every connector of the set."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vlmtrack.data.dataset import Batch
from vlmtrack.model.backbone import Backbone, ablate


@dataclass
class LossSums:
    """Σ loss and Σ tokens per bucket for one connector; adds up across batches (and ranks)."""
    loss: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    examples: dict[str, int] = field(default_factory=dict)
    truncated: int = 0

    def add(self, bucket: str, loss: float, tokens: int, truncated: bool) -> None:
        self.loss[bucket] = self.loss.get(bucket, 0.0) + loss
        self.tokens[bucket] = self.tokens.get(bucket, 0) + tokens
        self.examples[bucket] = self.examples.get(bucket, 0) + 1
        self.truncated += int(truncated)

    def metrics(self, prefix: str = "eval") -> dict[str, float]:
        tokens = sum(self.tokens.values())
        examples = sum(self.examples.values())
        out = {
            f"{prefix}_loss": sum(self.loss.values()) / max(tokens, 1),
            f"{prefix}_label_tokens_total": tokens,
            f"{prefix}_examples_total": examples,
            f"{prefix}_truncated_pct": 100.0 * self.truncated / max(examples, 1),
        }
        for b in sorted(self.tokens):
            out[f"{prefix}_loss_{b}"] = self.loss[b] / max(self.tokens[b], 1)
            out[f"{prefix}_label_tokens_{b}"] = self.tokens[b]
            out[f"{prefix}_examples_{b}"] = self.examples[b]
        return out


def autocast(device: torch.device, dtype: torch.dtype):
    enabled = device.type == "cuda" and dtype != torch.float32
    return torch.autocast(device.type, dtype=dtype, enabled=enabled)


def batch_losses(backbone: Backbone, connectors: list, batch: Batch, mode: str = "correct",
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """[K, B] summed token losses of each connector on the batch under a vision mode."""
    features = ablate(batch_features(backbone, batch), mode, generator)
    visual = torch.stack([c(features) for c in connectors])
    return backbone.token_losses(batch.input_ids, batch.labels, visual)


def batch_features(backbone: Backbone, batch: Batch) -> torch.Tensor:
    """The frozen tower's output: from the feature cache when the batch carries it, else computed."""
    if batch.features is not None:
        return batch.features.to(backbone.llm.dtype)
    return backbone.vision_features(batch.pixel_values)


@torch.no_grad()
def evaluate(backbone: Backbone, connectors: list, batches, device: torch.device, dtype: torch.dtype,
             mode: str = "correct", seed: int = 0) -> list[LossSums]:
    """Loss sums of every connector over the whole loader (one backbone pass per batch for all)."""
    for c in connectors:
        c.eval()
    sums = [LossSums() for _ in connectors]
    generator = torch.Generator().manual_seed(seed)
    for batch in batches:
        batch.to(device)
        with autocast(device, dtype):
            losses = batch_losses(backbone, connectors, batch, mode, generator).cpu().tolist()
        tokens, truncated = batch.num_supervised.tolist(), batch.truncated.tolist()
        for k, s in enumerate(sums):
            for r in range(len(batch)):
                s.add(batch.bucket[r], losses[k][r], tokens[r], truncated[r])
    for c in connectors:
        c.train()
    return sums
