"""CUDA graphs for the launch-bound training step. At a few sequences per step (the spec's sweep: six
trials x 4 samples) the GPU finishes the work in a few milliseconds and waits on Python and kernel
launches for the rest (docs/PERFORMANCE.md); a captured graph replays the whole forward and backward
of every connector with one launch.

What a graph needs, and how the step provides it:
- fixed shapes: sequences are right-padded to a multiple of SHAPE_STEP and the label positions to a
  multiple of LABEL_STEP (`static_token_losses`); one graph per (rows, length, label width), all in one
  memory pool (replayed one at a time, so the pool holds the largest graph's activations, not their sum);
- fixed addresses: batches are copied into the graph's own input tensors, the 1/tokens scale is a device
  scalar, and gradients accumulate in place in `.grad` tensors that live for the whole run (the loop
  zeroes them instead of freeing them);
- no host sync inside: positions and targets are computed on the host before the copy.
The optimizer step stays outside the graph (a few fused launches per update)."""
from __future__ import annotations

import time

import torch

from vlmtrack.data.dataset import Batch
from vlmtrack.data.prompt import IGNORE_INDEX
from vlmtrack.model.backbone import Backbone, static_positions
from vlmtrack.model.kernels import FUSED_MIN_SEQUENCES

GRAPH_CHOICES = ("auto", "on", "off")
# Padding multiples: finer steps pad less but capture more graphs (one per shape, once per run). On the
# bench's sweep data (captions of ~15 tokens, 6 x 4 rows), 32/32 padded 24% of the tokens and 2.6x the
# labels (3 shapes); 16/8 pads 16% and 1.9x (8 shapes): ~8% less work per step, FLOP for FLOP.
SHAPE_STEP = 16  # sequence lengths
LABEL_STEP = 8  # label positions (the rows of the [labels, vocab] logits)
WARMUP_STEPS = 2  # eager passes on a side stream before capture (cuBLAS workspaces, lazy inits)


def use_cuda_graphs(setting: str, device: torch.device, sequences_per_step: int) -> bool:
    """`auto`: on CUDA below FUSED_MIN_SEQUENCES sequences per step, where launches dominate the step."""
    if setting not in GRAPH_CHOICES:
        raise ValueError(f"train.cuda_graphs={setting!r}: use one of {', '.join(GRAPH_CHOICES)}")
    if setting == "on" and device.type != "cuda":
        raise ValueError("train.cuda_graphs=on needs a CUDA device: use train.cuda_graphs=auto or off on CPU")
    return setting == "on" or (setting == "auto" and device.type == "cuda"
                               and sequences_per_step < FUSED_MIN_SEQUENCES)


def padded(n: int, step: int = SHAPE_STEP) -> int:
    return -(-n // step) * step


def static_inputs(backbone: Backbone, batch: Batch, num_latents: int) -> dict[str, torch.Tensor]:
    """The batch as fixed-shape host tensors: ids right-padded to a multiple of SHAPE_STEP, the visual and
    label positions (LABEL_STEP wide), the targets, and the vision input (cached features or pixels)."""
    rows, length = batch.input_ids.shape
    width = padded(length)
    ids = torch.full((rows, width), backbone.pad_id, dtype=batch.input_ids.dtype)
    ids[:, :length] = batch.input_ids
    labels = torch.full((rows, width), IGNORE_INDEX, dtype=batch.labels.dtype)
    labels[:, :length] = batch.labels
    label_width = padded(max(1, int((batch.labels[:, 1:] != IGNORE_INDEX).sum(1).max())), LABEL_STEP)
    image_at, label_at, targets = static_positions(ids, labels, backbone.visual_token_ids, num_latents, label_width)
    vision = {"features": batch.features} if batch.features is not None else {"pixel_values": batch.pixel_values}
    return {"input_ids": ids, "image_at": image_at, "label_at": label_at, "targets": targets, **vision}


class GraphedSteps:
    """Forward + backward of a fixed set of connectors over one micro-batch, as replayed CUDA graphs."""

    def __init__(self, backbone: Backbone, connectors: list, dtype: torch.dtype, num_latents: int, log=print):
        self.backbone, self.connectors, self.dtype = backbone, list(connectors), dtype
        self.num_latents, self.log = num_latents, log
        self.params = [p for c in self.connectors for p in c.parameters() if p.requires_grad]
        self.device = self.params[0].device
        self.inv_tokens = torch.zeros((), device=self.device)
        self.pool = torch.cuda.graph_pool_handle()
        # per shape: the graph, its device inputs, their pinned host staging, its [K] losses output
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, dict, dict, torch.Tensor]] = {}
        self.copied = torch.cuda.Event()  # when the last step's staging may be written again
        self.failed: str | None = None

    def serves(self, connectors: list) -> bool:
        return len(connectors) == len(self.connectors) and all(a is b for a, b in zip(connectors, self.connectors))

    def _forward_backward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        bb = self.backbone
        # no autocast weight cache: its casts would be freed when the context closes, inside the capture
        with torch.autocast("cuda", dtype=self.dtype, enabled=self.dtype != torch.float32, cache_enabled=False):
            if "features" in inputs:
                features = inputs["features"].to(bb.llm.dtype)
            else:
                features = bb.vision_features(inputs["pixel_values"])
            visual = torch.stack([c(features) for c in self.connectors])
            losses = bb.static_token_losses(inputs["input_ids"], inputs["image_at"], inputs["label_at"],
                                            inputs["targets"], visual).sum(1)
        (losses * self.inv_tokens).sum().backward()
        return losses.detach()

    def _capture(self, host: dict[str, torch.Tensor]):
        inputs = {k: v.to(self.device) for k, v in host.items()}
        # pinned copies of the inputs the loader did not pin: a copy from pageable memory may wait for the
        # stream (the previous replay), a pinned one overlaps it
        staging = {k: torch.empty(v.shape, dtype=v.dtype, pin_memory=True) for k, v in host.items() if not v.is_pinned()}
        for p in self.params:  # gradients must exist before capture, so backward adds into them in place
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        saved = [p.grad.clone() for p in self.params]  # a capture may happen mid accumulation window
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self._forward_backward(inputs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: the feature cache's build may run the tower on another thread meanwhile
            with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
                losses = self._forward_backward(inputs)
        finally:
            for p, g in zip(self.params, saved):
                p.grad.copy_(g)
        return graph, inputs, staging, losses

    def step(self, batch: Batch, tokens: int) -> torch.Tensor | None:
        """Adds this micro-batch's gradients (scaled by 1/tokens) into the connectors' `.grad` and returns
        the [K] summed losses (a tensor the next call overwrites), or None once capture has failed (the
        caller then runs the eager step)."""
        if self.failed:
            return None
        host = static_inputs(self.backbone, batch, self.num_latents)
        key = tuple((k, tuple(v.shape)) for k, v in host.items())
        if key not in self.graphs:
            t0 = time.perf_counter()
            try:
                self.graphs[key] = self._capture(host)
            except Exception as e:  # a model with a host sync in its forward: train on, eagerly
                self.failed = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                self.log(f"[graphs] CUDA graph capture failed ({self.failed}); eager steps from here")
                return None
            self.log(f"[graphs] captured the step for {len(self.connectors)} connector(s), rows x length x "
                     f"label width = {host['input_ids'].shape[0]} x {host['input_ids'].shape[1]} x "
                     f"{host['label_at'].shape[1]} in {time.perf_counter() - t0:.2f} s (graph {len(self.graphs)})")
        graph, inputs, staging, losses = self.graphs[key]
        self.copied.synchronize()  # the last step's copies are done: its staging may be overwritten
        for name, value in host.items():
            if name in staging:
                value = staging[name].copy_(value)
            inputs[name].copy_(value, non_blocking=True)
        self.copied.record()
        self.inv_tokens.fill_(1.0 / max(tokens, 1))
        graph.replay()
        return losses
