"""The forward every consumer shares (training step, eval, ablations): frozen tower (or cached features),
the connectors, the frozen LLM, and per-sample summed token losses, never a mean."""
from __future__ import annotations

import torch

from vlmtrack.data.dataset import Batch
from vlmtrack.model.backbone import Backbone, ablate
from vlmtrack.model.kernels import sdpa_without_cudnn


def batch_losses(backbone: Backbone, connectors: list, batch: Batch, mode: str = "correct",
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """[K, B] summed token losses of each connector on the batch under a vision mode."""
    features = ablate(batch_features(backbone, batch), mode, generator)
    with sdpa_without_cudnn():  # cuDNN would plan the connector's attention anew at each batch size
        visual = torch.stack([c(features) for c in connectors])
    return backbone.token_losses(batch.input_ids, batch.labels, visual)


def batch_features(backbone: Backbone, batch: Batch) -> torch.Tensor:
    """The frozen tower's output: from the feature cache when the batch carries it, else computed."""
    if batch.features is not None:
        return batch.features.to(backbone.llm.dtype)
    return backbone.vision_features(batch.pixel_values)
