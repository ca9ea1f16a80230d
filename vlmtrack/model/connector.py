"""The trainable connector: optional LayerNorm on vision features, then a Perceiver resampler that
turns N patch features into `num_latents` tokens in the LLM's embedding space (model.connector=resampler,
the default); and the factories that build either kind (idefics2: idefics2_connector.py)."""
from __future__ import annotations

import torch
from torch import nn

from vlmtrack.config import IDEFICS2
from vlmtrack.model.connector_io import connector_kind


class ResamplerBlock(nn.Module):
    """Latents attend to [features; latents] (Flamingo's resampler), then a feed-forward layer."""

    def __init__(self, dim: int, heads: int, ffn_mult: int):
        super().__init__()
        self.norm_x = nn.LayerNorm(dim)
        self.norm_q = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ffn = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * ffn_mult), nn.GELU(),
                                 nn.Linear(dim * ffn_mult, dim))

    def forward(self, latents: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        q = self.norm_q(latents)
        kv = torch.cat([self.norm_x(x), q], dim=1)
        latents = latents + self.attn(q, kv, kv, need_weights=False)[0]
        return latents + self.ffn(latents)


class Connector(nn.Module):
    def __init__(self, vision_dim: int, llm_dim: int, num_latents: int = 64, depth: int = 2, heads: int = 8,
                 ffn_mult: int = 4, vision_ln: bool = False, width: int | None = None):
        super().__init__()
        width = width or llm_dim
        if width % heads:
            raise ValueError(f"resampler width {width} is not divisible by model.resampler_heads={heads}")
        self.config = {"vision_dim": vision_dim, "llm_dim": llm_dim, "num_latents": num_latents, "depth": depth,
                       "heads": heads, "ffn_mult": ffn_mult, "vision_ln": vision_ln, "width": width}
        self.vision_ln = nn.LayerNorm(vision_dim) if vision_ln else nn.Identity()
        self.proj_in = nn.Linear(vision_dim, width)
        self.latents = nn.Parameter(torch.randn(num_latents, width) * 0.02)
        self.blocks = nn.ModuleList(ResamplerBlock(width, heads, ffn_mult) for _ in range(depth))
        self.norm_out = nn.LayerNorm(width)
        self.proj_out = nn.Linear(width, llm_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """[B, N, vision_dim] frozen-tower features -> [B, num_latents, llm_dim] visual tokens."""
        x = self.proj_in(self.vision_ln(features))
        latents = self.latents.unsqueeze(0).expand(x.shape[0], -1, -1)
        for block in self.blocks:
            latents = block(latents, x)
        return self.proj_out(self.norm_out(latents))


def connector_from_config(config: dict) -> nn.Module:
    """The connector a checkpoint's connector.json describes (no `kind`: the resampler, as before it had one)."""
    from vlmtrack.model.idefics2_connector import KIND, Idefics2StyleConnector

    kind = connector_kind(config)
    config = {k: v for k, v in config.items() if k != "kind"}
    return Idefics2StyleConnector(**config) if kind == KIND else Connector(**config)


def visual_length(m) -> int:
    """Positions a connector of model config m fills per image: its latents, and for idefics2 a boundary
    token on each side."""
    return m.num_latents + (2 if m.connector == IDEFICS2 else 0)


def new_connector(m, backbone) -> nn.Module:
    """A fresh connector for model config m (ModelConfig) between the backbone's towers."""
    from vlmtrack.model.idefics2_connector import KIND, Idefics2StyleConnector

    if m.connector != KIND:
        return Connector(backbone.vision_dim, backbone.llm_dim, m.num_latents, m.resampler_depth,
                         m.resampler_heads, m.resampler_ffn_mult, m.vision_ln)
    text = backbone.llm.config
    connector = Idefics2StyleConnector(backbone.vision_dim, backbone.llm_dim, text.intermediate_size,
                                       text.hidden_act, text.rms_norm_eps, m.num_latents, m.resampler_depth,
                                       m.resampler_heads)
    with torch.no_grad():  # the boundary token starts where the LLM's own row for it is
        connector.boundary.copy_(backbone.llm.get_input_embeddings().weight[backbone.boundary_token_id])
    return connector
