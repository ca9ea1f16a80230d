"""model.connector=idefics2: transformers' own `Idefics2Connector` (an MLP modality projection, then a
Perceiver resampler with grouped-query attention and RMSNorm), built from our towers' dims, plus the one
embedding row Idefics2 adds to the LLM: `<fake_token_around_image>`, on each side of an image's tokens.

Training and the export (idefics2_export.py) share the module and `idefics2_config`, so the exported
`Idefics2ForConditionalGeneration` holds these weights one to one."""
from __future__ import annotations

import torch
from torch import nn
from transformers import Idefics2Config
from transformers.models.idefics2.modeling_idefics2 import Idefics2Connector

from vlmtrack.config import IDEFICS2

KIND = IDEFICS2
# Idefics2's perceiver has 4 key/value heads for 16 query heads: the same 1:4 where the head count allows
KV_HEAD_RATIO = 4


def grouped_kv_heads(heads: int) -> int:
    """The largest divisor of `heads` that is at most heads / 4 (at least 1): grouped-query attention."""
    return max(d for d in range(1, max(1, heads // KV_HEAD_RATIO) + 1) if heads % d == 0)


def perceiver_config(c: dict) -> dict:
    """Idefics2PerceiverConfig's fields from a connector's config (connector.json's `connector`)."""
    return {"hidden_size": c["llm_dim"], "rms_norm_eps": c["rms_norm_eps"], "hidden_act": "silu",
            "resampler_n_latents": c["num_latents"], "resampler_depth": c["depth"],
            "resampler_n_heads": c["heads"], "resampler_head_dim": c["llm_dim"] // c["heads"],
            "num_key_value_heads": c["kv_heads"]}


def idefics2_config(c: dict, text_config: dict, vision_config: dict, image_token_id: int) -> Idefics2Config:
    """The Idefics2Config that holds a connector of config c between these towers. Input and output
    embeddings stay untied: the boundary token's trained row is an input embedding only (training never
    changes the LLM's output rows), so an LLM that ties them (Qwen3-0.6B) is exported with both."""
    text = {**text_config, "tie_word_embeddings": False}
    return Idefics2Config(text_config=text, vision_config=vision_config, perceiver_config=perceiver_config(c),
                          image_token_id=image_token_id, tie_word_embeddings=False)


class Idefics2StyleConnector(nn.Module):
    def __init__(self, vision_dim: int, llm_dim: int, llm_intermediate_size: int, llm_hidden_act: str,
                 rms_norm_eps: float, num_latents: int = 64, depth: int = 3, heads: int = 16,
                 kv_heads: int | None = None):
        super().__init__()
        if llm_dim % heads:
            raise ValueError(f"the LLM's hidden size {llm_dim} is not divisible by model.resampler_heads={heads}")
        self.config = {"kind": KIND, "vision_dim": vision_dim, "llm_dim": llm_dim,
                       "llm_intermediate_size": llm_intermediate_size, "llm_hidden_act": llm_hidden_act,
                       "rms_norm_eps": rms_norm_eps, "num_latents": num_latents, "depth": depth, "heads": heads,
                       "kv_heads": kv_heads or grouped_kv_heads(heads)}
        text = {"model_type": "qwen3", "hidden_size": llm_dim, "intermediate_size": llm_intermediate_size,
                "hidden_act": llm_hidden_act, "rms_norm_eps": rms_norm_eps}
        cfg = idefics2_config(self.config, text, {"hidden_size": vision_dim}, image_token_id=0)
        self.connector = Idefics2Connector(cfg)
        with torch.no_grad():  # Idefics2 starts its latents all equal (ones): random ones start them apart
            self.connector.perceiver_resampler.latents.normal_()
        self.boundary = nn.Parameter(torch.zeros(llm_dim))  # new_connector starts it at the LLM's own row

    @property
    def num_visual(self) -> int:
        """Positions this connector fills per image: the latents and a boundary token on each side."""
        return self.config["num_latents"] + 2

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """[B, N, vision_dim] -> [B, num_latents + 2, llm_dim]: boundary, resampled image, boundary."""
        mask = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
        x = self.connector(features, attention_mask=mask)
        b = self.boundary.to(x.dtype).expand(x.shape[0], 1, -1)
        return torch.cat([b, x, b], dim=1)
