"""Token-weighted eval (spec 2): every aggregate is Σ loss / Σ tokens of per-sample sums, overall and
per bucket, never a mean of batch means. One pass serves every connector of the set."""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import torch

from vlmtrack.data.dataset import Batch
from vlmtrack.model.backbone import Backbone
from vlmtrack.model.forward import batch_losses
from vlmtrack.runtime import distributed as dist
from vlmtrack.runtime.device import autocast


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

    def merge(self, other: LossSums) -> LossSums:
        for b in other.tokens:
            self.loss[b] = self.loss.get(b, 0.0) + other.loss[b]
            self.tokens[b] = self.tokens.get(b, 0) + other.tokens[b]
            self.examples[b] = self.examples.get(b, 0) + other.examples[b]
        self.truncated += other.truncated
        return self

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


@torch.no_grad()
def evaluate(backbone: Backbone, connectors: list, batches, device: torch.device, dtype: torch.dtype,
             mode: str = "correct", seed: int = 0) -> list[LossSums]:
    """Loss sums of every connector over the whole loader (one backbone pass per batch for all). Under
    torchrun `batches` is this rank's shard and the sums returned are those of all ranks."""
    return evaluate_modes(backbone, connectors, batches, device, dtype, (mode,), seed)[mode]


@torch.no_grad()
def evaluate_modes(backbone: Backbone, connectors: list, batches, device: torch.device, dtype: torch.dtype,
                   modes: tuple[str, ...], seed: int = 0) -> dict[str, list[LossSums]]:
    """evaluate() under each vision mode in one pass over the loader: each batch is loaded and moved to the
    device once for all modes (the ablations' four modes had one loader, and its workers' start, each)."""
    for c in connectors:
        c.eval()
    sums = {m: [LossSums() for _ in connectors] for m in modes}
    for batch in batches:
        batch.to(device)
        tokens, truncated = batch.num_supervised.tolist(), batch.truncated.tolist()
        for mode in modes:
            with autocast(device, dtype):
                losses = batch_losses(backbone, connectors, batch, mode, batch_generator(seed, batch)).cpu().tolist()
            for k, s in enumerate(sums[mode]):
                for r in range(len(batch)):
                    s.add(batch.bucket[r], losses[k][r], tokens[r], truncated[r])
    for c in connectors:
        c.train()
    return {mode: across_ranks(s) for mode, s in sums.items()}


def batch_generator(seed: int, batch: Batch) -> torch.Generator:
    """The ablation draws (shuffle, noise) of a batch depend on the seed and its items alone, so a batch
    is ablated alike whichever rank evaluates it and whatever came before it."""
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32("\n".join(map(str, batch.ids)).encode()))


def across_ranks(sums: list[LossSums]) -> list[LossSums]:
    """Each rank evaluated its shard of the batches: the sums (never the means) of all ranks, added up."""
    if dist.world_size() == 1:
        return sums
    per_rank = dist.gather_objects(sums)
    totals = [LossSums() for _ in sums]
    for ranks_sums in per_rank:
        for total, part in zip(totals, ranks_sums):
            total.merge(part)
    return totals
