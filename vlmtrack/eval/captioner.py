"""A connector checkpoint as a captioner: decoded images in, one caption each out, with the run's golden
settings (eval.max_new_tokens, temperature, top_p, generation_seed). What the MLflow captioning model
(tracking/caption_model.py) runs; it knows nothing of MLflow, files sent by clients or base64."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from vlmtrack.config import Config, EvalConfig, load_config
from vlmtrack.eval.golden_gen import caption_images
from vlmtrack.model.backbone import Backbone, load_backbone
from vlmtrack.model.connector import Connector
from vlmtrack.model.connector_io import load_connector_weights
from vlmtrack.runtime.device import device_and_dtype

# the golden settings a caller may change per request, and the range each must lie in
GENERATION_PARAMS = ("max_new_tokens", "temperature", "top_p")


class RequestError(ValueError):
    """A caller's generation parameter is unknown or out of range (a served request's 4xx)."""


@dataclass
class Captioner:
    backbone: Backbone
    connector: Connector
    cfg: Config
    device: torch.device
    dtype: torch.dtype
    instruction: str

    def caption(self, images: list, **overrides) -> list[str]:
        """Captions for decoded RGB images; `overrides` (GENERATION_PARAMS, None = the run's own) change
        the golden settings for this call only."""
        ecfg = generation_settings(self.cfg.eval, overrides)
        return caption_images(self.backbone, self.connector, images, self.instruction, self.cfg.model.num_latents,
                              ecfg, self.device, self.dtype)


def generation_settings(ecfg: EvalConfig, overrides: dict) -> EvalConfig:
    """The run's golden settings with a request's overrides; a RequestError naming a value out of range."""
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(given) - set(GENERATION_PARAMS))
    if unknown:
        raise RequestError(f"unknown generation parameter(s) {unknown}: use {', '.join(GENERATION_PARAMS)}")
    out = dataclasses.replace(ecfg, **given)
    problems = []
    if int(out.max_new_tokens) < 1:
        problems.append(f"max_new_tokens must be at least 1, got {out.max_new_tokens}")
    if float(out.temperature) < 0:
        problems.append(f"temperature must be ≥ 0 (0 = greedy), got {out.temperature}")
    if not 0 < float(out.top_p) <= 1:
        problems.append(f"top_p must be in (0, 1], got {out.top_p}")
    if problems:
        raise RequestError("; ".join(problems))
    return dataclasses.replace(out, max_new_tokens=int(out.max_new_tokens), temperature=float(out.temperature),
                               top_p=float(out.top_p))


def load_captioner(connector_dir: Path, config_path: Path, llm: str, vision: str, instruction: str,
                   device: str = "auto", revisions: dict | None = None) -> Captioner:
    """The connector of `connector_dir` over the towers `llm` and `vision` (local folders or hub ids at
    `revisions`), with the run's config (`config_path`) for its shapes and golden settings. It runs on
    `device` (auto: CUDA when there is one) in that device's default precision, whatever the run used."""
    cfg = load_config(config_path)
    cfg.train.device, cfg.train.precision = device, "auto"
    weights, meta = load_connector_weights(Path(connector_dir))
    torch_device, dtype = device_and_dtype(cfg)
    revisions = revisions or {}
    backbone = load_backbone(llm, vision, dtype, cfg.model.trust_remote_code, revisions.get("llm"),
                             revisions.get("vision")).to(torch_device)
    connector = Connector(**meta["connector"]).to(torch_device)
    connector.load_state_dict(weights)
    connector.eval()
    return Captioner(backbone, connector, cfg, torch_device, dtype, instruction)
