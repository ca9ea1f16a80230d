"""The frozen part of the VLM: vision tower + LLM, loaded through `from_pretrained`, and the two
passes every connector shares: vision features once per batch, and the LLM over the stacked
sequences of all connectors, with the loss only at label positions."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoImageProcessor, AutoModel, AutoModelForCausalLM, AutoTokenizer

from vlmtrack.config import IDEFICS2, RESAMPLER
from vlmtrack.data.prompt import IGNORE_INDEX, add_idefics2_tokens, add_image_token
from vlmtrack.model.kernels import sdpa_without_cudnn

VISION_MODES = ("correct", "shuffled", "zero", "noise")
EVAL_LOGIT_ROWS = 4096  # label positions per chunk of eval logits: 4096 x Qwen3's 151,936 x fp32 = 2.5 GB


class ModelLoadError(ValueError):
    pass


def check_model_source(path: str, what: str) -> None:
    """Fails fast, in one line: a local path that does not exist, or a hub id that is neither in the
    HF cache nor reachable (instead of a minute of retries and a stack of warnings)."""
    import os
    import socket
    from urllib.parse import urlparse

    if Path(path).expanduser().exists():
        return
    if path.startswith(("/", ".", "~")) or path.count("/") > 1 or "\\" in path:
        raise ModelLoadError(f"{what} path '{path}' does not exist: give an existing folder or a hub id")
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(path, "config.json"), str) or os.environ.get("HF_HUB_OFFLINE") == "1":
        return
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = endpoint.hostname
    try:
        socket.create_connection((host, endpoint.port or 443), timeout=5).close()
    except OSError as e:
        raise ModelLoadError(
            f"{what} '{path}' is not in the HF cache and {host} cannot be reached ({e.strerror or e}): "
            "download it where there is network (huggingface-cli download) or give a local path"
        ) from None


@contextlib.contextmanager
def no_progress_bars():
    """transformers draws a bar for every model it loads: noise between a run's own lines, and each rank of
    a torchrun job draws its own. Off for the load, as it was after."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _from_pretrained(loader, path: str, what: str, **kw):
    check_model_source(path, what)
    try:
        with no_progress_bars():
            return loader.from_pretrained(path, **kw)
    except OSError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(
            f"cannot load {what} from '{path}': {first} (give an existing local path, or a hub id with network "
            "access / a populated HF cache)"
        ) from None


def image_processor_backend() -> dict:
    """The image processor's backend, chosen here rather than by transformers: where torchvision does not
    import (CPU installs leave it out: its PyPI build is pinned to one torch and CUDA), the PIL processor,
    asked for by name, so that loading it is not a fallback transformers warns about on every run. Older
    transformers, which have one processor per model, are given nothing."""
    import importlib
    import importlib.util

    if importlib.util.find_spec("transformers.models.auto.image_processing_auto") is None:
        return {}
    auto = importlib.import_module("transformers.models.auto.image_processing_auto")
    if not hasattr(auto, "_resolve_backend"):  # transformers before the torchvision/PIL backends
        return {}
    try:
        importlib.import_module("torchvision")
    except Exception:  # absent, or installed for another torch: neither can run the torchvision processor
        return {"backend": "pil"}
    return {}


@dataclass
class Backbone:
    llm: nn.Module
    tower: nn.Module
    tokenizer: object
    image_processor: object
    image_token_id: int
    pad_id: int
    fused_ce: object = None  # (lm_head weight, hidden, targets) -> per-token loss; None = plain PyTorch
    compiled_body: object = None  # embeds -> hidden states through compiled layers (train.compile)
    boundary_token_id: int | None = None  # model.connector=idefics2: <fake_token_around_image>, filled by the connector

    @property
    def visual_token_ids(self) -> tuple[int, ...]:
        """The ids whose positions hold the connector's output rather than a token embedding."""
        if self.boundary_token_id is None:
            return (self.image_token_id,)
        return self.boundary_token_id, self.image_token_id

    @property
    def llm_dim(self) -> int:
        return self.llm.get_input_embeddings().embedding_dim

    @property
    def tower_dtype(self) -> torch.dtype:
        return next(self.tower.parameters()).dtype

    @property
    def vision_dim(self) -> int:
        return self.tower.config.hidden_size

    def to(self, device) -> "Backbone":
        self.llm.to(device)
        self.tower.to(device)
        return self

    @torch.no_grad()
    def vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.tower(pixel_values=pixel_values).last_hidden_state

    def embed(self, input_ids: torch.Tensor, visual: torch.Tensor, image_at: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings with the visual positions (the connector's output length per row) replaced by
        visual tokens; the positions are found from the ids, or given as image_at [B, positions] (fixed
        shapes, no host sync: what a CUDA graph can capture)."""
        is_image = visual_positions(input_ids, self.visual_token_ids)
        embeds = self.llm.get_input_embeddings()(input_ids.masked_fill(is_image, self.pad_id))
        visual = visual.to(embeds.dtype)
        if image_at is None:
            return embeds.masked_scatter(is_image.unsqueeze(-1), visual)
        return embeds.scatter(1, image_at.unsqueeze(-1).expand(-1, -1, embeds.shape[-1]), visual)

    def token_losses(self, input_ids: torch.Tensor, labels: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """Summed next-token loss per row. visual is [K, B, L, H] (K connectors); the LLM runs once
        over the K*B stacked sequences; returns [K, B]. Logits are formed only at label positions.

        No attention mask: batches are right-padded, so under causal attention no real token ever sees
        a pad, and without a mask SDPA takes its fused causal kernel."""
        k, b = visual.shape[:2]
        ids = input_ids.repeat(k, 1)
        embeds = self.embed(ids, visual.reshape(k * b, *visual.shape[2:]))
        hidden = self._body(embeds)
        targets = labels[:, 1:].repeat(k, 1)
        at = targets != IGNORE_INDEX
        rows = at.nonzero()[:, 0]
        hidden_at = hidden[:, :-1][at]
        if self.fused_ce is not None:  # the logits at label positions are never materialised whole
            per_token = self.fused_ce(self.llm.lm_head.weight, hidden_at, targets[at]).float()
        else:
            per_token = self._label_losses(hidden_at, targets[at])
        sums = torch.zeros(k * b, device=per_token.device, dtype=per_token.dtype).index_add_(0, rows, per_token)
        return sums.view(k, b)

    def _body(self, embeds: torch.Tensor) -> torch.Tensor:
        """The decoder's last hidden states, no KV cache. The training forward goes through the compiled
        body where there is one; eval (no autograd, other batch sizes) and generation stay eager, so the
        compile serves one kind of graph."""
        with sdpa_without_cudnn():
            return self._decoder(embeds)

    def _decoder(self, embeds: torch.Tensor) -> torch.Tensor:
        if self.compiled_body is not None and torch.is_grad_enabled():
            return self.compiled_body(embeds)
        return self.llm.model(inputs_embeds=embeds, use_cache=False).last_hidden_state

    def _label_losses(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-token loss from the hidden states at label positions. Without autograd (eval: K connectors x
        a large batch) the [tokens, vocab] logits are formed a chunk at a time, so memory stays bounded."""
        chunk = max(len(targets), 1) if torch.is_grad_enabled() else EVAL_LOGIT_ROWS
        parts = [nn.functional.cross_entropy(self.llm.lm_head(h).float(), t, reduction="none", ignore_index=IGNORE_INDEX)
                 for h, t in zip(hidden.split(chunk), targets.split(chunk))]
        return torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)

    def static_token_losses(self, input_ids: torch.Tensor, image_at: torch.Tensor, label_at: torch.Tensor,
                            targets: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """token_losses with every shape fixed by its inputs (no boolean indexing, no host sync), so a CUDA
        graph can capture it: image_at [B, num_latents] and label_at [B, M] are positions (`static_positions`),
        targets [B, M] the labels there (IGNORE_INDEX where a row has fewer than M). Returns [K, B]."""
        k, b = visual.shape[:2]
        embeds = self.embed(input_ids.repeat(k, 1), visual.reshape(k * b, *visual.shape[2:]), image_at.repeat(k, 1))
        # torch's attention backends: a captured graph plans its shape once (kernels.NO_CUDNN_BACKENDS)
        hidden = self._decoder(embeds)
        hidden_at = hidden.gather(1, label_at.repeat(k, 1).unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        per_token = self._label_losses(hidden_at.flatten(0, 1), targets.repeat(k, 1).flatten())
        return per_token.view(k, b, -1).sum(-1)


def visual_positions(input_ids: torch.Tensor, visual_token_ids: tuple[int, ...]) -> torch.Tensor:
    """Where the ids are one of visual_token_ids: the positions the connector's output fills."""
    is_visual = input_ids == visual_token_ids[0]
    for tid in visual_token_ids[1:]:
        is_visual |= input_ids == tid
    return is_visual


def static_positions(input_ids: torch.Tensor, labels: torch.Tensor, visual_token_ids: tuple[int, ...],
                     num_latents: int, label_width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image_at [B, num_latents], label_at [B, label_width], targets [B, label_width]) for
    static_token_losses: where the visual tokens go (num_latents: the connector's output length), which
    hidden states predict a label and that label. Computed on the host, per batch, before the copy to the
    device."""
    is_image = visual_positions(input_ids, visual_token_ids)
    if not bool((is_image.sum(1) == num_latents).all()):
        raise ValueError(f"every row needs exactly {num_latents} image positions")
    image_at = is_image.nonzero()[:, 1].view(-1, num_latents)
    b = input_ids.shape[0]
    label_at = torch.zeros(b, label_width, dtype=torch.long)
    targets = torch.full((b, label_width), IGNORE_INDEX, dtype=torch.long)
    for r in range(b):
        at = (labels[r, 1:] != IGNORE_INDEX).nonzero()[:, 0]
        if len(at) > label_width:
            raise ValueError(f"row {r} has {len(at)} label tokens, more than label_width={label_width}")
        label_at[r, : len(at)] = at
        targets[r, : len(at)] = labels[r, 1:][at]
    return image_at, label_at, targets


def load_tokenizer(llm_path: str, trust_remote_code: bool = False, revision: str | None = None):
    """The LLM's tokenizer with vlmtrack's `<image>` placeholder added."""
    tokenizer = _from_pretrained(AutoTokenizer, llm_path, "tokenizer", trust_remote_code=trust_remote_code,
                                 **_at(revision))
    add_image_token(tokenizer)
    return tokenizer


def _at(revision: str | None) -> dict:
    # a hub revision (commit) only when one is recorded: a local folder has none
    return {"revision": revision} if revision else {}


def load_backbone(llm_path: str, vision_path: str, dtype: torch.dtype = torch.float32,
                  trust_remote_code: bool = False, connector: str = RESAMPLER, llm_revision: str | None = None,
                  vision_revision: str | None = None) -> Backbone:
    """The frozen towers for a connector kind (model.connector); idefics2 adds Idefics2's tokens to the
    tokenizer, and to the LLM's vocabulary where it has no spare rows for them."""
    tokenizer = load_tokenizer(llm_path, trust_remote_code, llm_revision)
    image_token_id = add_image_token(tokenizer)
    boundary_token_id = add_idefics2_tokens(tokenizer) if connector == IDEFICS2 else None
    remote = {"trust_remote_code": trust_remote_code}
    llm = _from_pretrained(AutoModelForCausalLM, llm_path, "LLM", dtype=dtype, **remote, **_at(llm_revision))
    tower = _from_pretrained(AutoModel, vision_path, "vision tower", dtype=dtype, **remote, **_at(vision_revision))
    tower = getattr(tower, "vision_model", tower)  # SiglipModel / CLIPModel -> their vision tower
    if boundary_token_id is not None:
        check_idefics2_tower(tower, vision_path)
        grow_vocabulary(llm, len(tokenizer))
    if getattr(tower, "use_head", False):  # SigLIP's attention-pooled output: computed, then never read
        tower.use_head = False
    image_processor = _from_pretrained(AutoImageProcessor, vision_path, "image processor", **remote,
                                       **image_processor_backend(), **_at(vision_revision))
    for module in (llm, tower):
        module.eval()
        module.requires_grad_(False)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return Backbone(llm, tower, tokenizer, image_processor, image_token_id, pad_id,
                    boundary_token_id=boundary_token_id)


def check_idefics2_tower(tower: nn.Module, vision_path: str) -> None:
    """Idefics2's vision model is SigLIP's: another tower (CLIP) has no place in the export."""
    kind = getattr(tower.config, "model_type", "?")
    if not kind.startswith("siglip"):
        raise ModelLoadError(
            f"model.connector=idefics2 needs a SigLIP vision tower (Idefics2's vision model is SigLIP's); "
            f"'{vision_path}' is {kind}: use a SigLIP tower or model.connector=resampler")


def grow_vocabulary(llm: nn.Module, size: int) -> None:
    """Rows for added tokens where the LLM's table ends before them (Qwen3's has 267 spare rows; the demo's
    none). A new row is the mean of the old ones, input and output: its logit, the mean of the others,
    takes at most 1/vocabulary of the softmax; its input row is never read (the connector fills those
    positions). Deterministic, so the export recomputes the same rows."""
    rows = llm.get_input_embeddings().weight.shape[0]
    if size <= rows:
        return
    out_old = llm.get_output_embeddings().weight.detach().clone()
    in_mean = llm.get_input_embeddings().weight.detach().mean(0)
    llm.resize_token_embeddings(size, mean_resizing=False)
    with torch.no_grad():
        llm.get_input_embeddings().weight[rows:] = in_mean
        llm.get_output_embeddings().weight[rows:] = out_old.mean(0)


def derangement(n: int, generator: torch.Generator) -> torch.Tensor:
    """A permutation with no fixed point: one random cycle through all n rows."""
    if n < 2:
        raise ValueError("a derangement needs at least 2 samples in the batch")
    order = torch.randperm(n, generator=generator)
    perm = torch.empty(n, dtype=torch.long)
    perm[order] = order.roll(-1)
    return perm


def ablate(features: torch.Tensor, mode: str, generator: torch.Generator) -> torch.Tensor:
    """What the connector sees under each vision ablation; applied to the frozen tower's output, before
    vision_ln, so every connector of a sweep sees the same ablated input."""
    if mode == "correct":
        return features
    if mode == "shuffled":
        return features[derangement(features.shape[0], generator).to(features.device)]
    if mode == "zero":
        return torch.zeros_like(features)
    if mode == "noise":
        noise = torch.randn(features.shape, generator=generator, dtype=torch.float32).to(features.device)
        return (noise * features.float().std() + features.float().mean()).to(features.dtype)
    raise ValueError(f"unknown vision_mode '{mode}': use one of {', '.join(VISION_MODES)}")
