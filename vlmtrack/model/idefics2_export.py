"""`vlmtrack export`: a model.connector=idefics2 checkpoint as a transformers-native
`Idefics2ForConditionalGeneration` + `Idefics2Processor` folder, for Stage 2 (transformers' Trainer, TRL)
with no vlmtrack installed.

What goes where:
    SigLIP vision tower  -> model.vision_model.*  (same layer names; SigLIP's pooling head is dropped)
    connector            -> model.connector.*     (the very Idefics2Connector training used)
    boundary token row   -> row <fake_token_around_image> of model.text_model.embed_tokens
    LLM (Qwen3)          -> model.text_model.*, lm_head (untied: see idefics2_connector.idefics2_config)
    tokenizer            -> vlmtrack's, with <image>, <fake_token_around_image>, <end_of_utterance>
    image processor      -> Idefics2's, resizing, scaling and normalising as the training tower's did
    chat template        -> the LLM's own, taking Idefics2-style content lists, thinking off by default:
                            it renders the prompt training used
"""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import GenerationConfig, Idefics2ForConditionalGeneration, Idefics2Processor

from vlmtrack.data.prompt import IMAGE_TOKEN, end_of_turn_id
from vlmtrack.model.backbone import Backbone, load_backbone
from vlmtrack.model.connector import connector_from_config
from vlmtrack.model.connector_io import connector_kind, load_connector_weights
from vlmtrack.model.idefics2_connector import KIND, Idefics2StyleConnector, idefics2_config

# SiglipVisionConfig fields that Idefics2VisionConfig has under the same names
VISION_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_channels",
                 "image_size", "patch_size", "hidden_act", "layer_norm_eps", "attention_dropout")

# Content lists (Idefics2's message format: {"type": "image"} / {"type": "text", "text": ...}) become the
# string content training's prompts had (`<image>\nDescribe the image.`: items joined by a newline), and
# thinking is off unless asked for, as training's prompt (enable_thinking=False) had it. Then the LLM's own
# template renders the messages.
CHAT_TEMPLATE_PREFIX = (
    "{%- if enable_thinking is not defined %}{%- set enable_thinking = false %}{%- endif %}"
    "{%- set vlm = namespace(messages=[]) %}"
    "{%- for m in messages %}"
    "{%- if m.content is string or m.content is none %}{%- set vlm.messages = vlm.messages + [m] %}"
    "{%- else %}{%- set part = namespace(text='', first=true) %}"
    "{%- for item in m.content %}"
    "{%- if not part.first %}{%- set part.text = part.text + '\\n' %}{%- endif %}"
    "{%- if item.type == 'image' %}{%- set part.text = part.text + '" + IMAGE_TOKEN + "' %}"
    "{%- else %}{%- set part.text = part.text + item.text %}{%- endif %}"
    "{%- set part.first = false %}"
    "{%- endfor %}"
    "{%- set vlm.messages = vlm.messages + [dict(m, content=part.text)] %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- set messages = vlm.messages %}"
)


class ExportError(ValueError):
    pass


def export_idefics2(folder: Path, out_dir: Path, trust_remote_code: bool = False, log=print) -> Path:
    """Writes the export of checkpoint folder `folder` into out_dir (new or empty); returns out_dir."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ExportError(f"'{out_dir}' exists and is not an empty folder: give a new one (an export's files never "
                          "mix with others, such as an earlier export's shards)")
    weights, meta = load_connector_weights(folder)
    config = meta["connector"]
    if connector_kind(config) != KIND:
        raise ExportError(f"'{folder}' is a model.connector=resampler checkpoint, which has no transformers "
                          "equivalent: train with model.connector=idefics2 to export")
    backbone = load_backbone(meta["llm"], meta["vision"], torch.float32, trust_remote_code, KIND)
    connector = connector_from_config(config)
    connector.load_state_dict(weights)
    model = idefics2_model(backbone, connector)
    check_image_features(backbone, connector, model)
    processor = idefics2_processor(backbone, config["num_latents"])
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    n = sum(p.numel() for p in model.parameters())
    log(f"[export] {folder} -> {out_dir}: Idefics2ForConditionalGeneration ({n:,} parameters, fp32) + "
        f"Idefics2Processor ({config['num_latents']} image tokens)")
    return out_dir


def vision_config(tower) -> dict:
    """Idefics2VisionConfig's fields from a SigLIP tower's config."""
    return {k: getattr(tower.config, k) for k in VISION_FIELDS}


def idefics2_model(backbone: Backbone, connector: Idefics2StyleConnector) -> Idefics2ForConditionalGeneration:
    """The Idefics2 model holding the backbone's and the connector's weights, tensor for tensor."""
    llm, tower, c = backbone.llm, backbone.tower, connector.config
    if (c["llm_dim"], c["vision_dim"]) != (backbone.llm_dim, backbone.vision_dim):
        raise ExportError(f"the checkpoint's connector joins a {c['vision_dim']}-wide tower to a {c['llm_dim']}-wide "
                          f"LLM; the towers it names load {backbone.vision_dim} and {backbone.llm_dim} wide")
    config = idefics2_config(c, llm.config.to_dict(), vision_config(tower), backbone.image_token_id)
    model = Idefics2ForConditionalGeneration(config)
    embed = llm.get_input_embeddings().weight.detach().clone()
    embed[backbone.boundary_token_id] = connector.boundary.detach()
    state = {f"model.text_model.{k}": v for k, v in llm.model.state_dict().items()}
    state["model.text_model.embed_tokens.weight"] = embed
    state["lm_head.weight"] = llm.get_output_embeddings().weight.detach().clone()
    # SigLIP's attention-pooled head: Idefics2 reads the patch states, never the pooled vector
    state.update({f"model.vision_model.{k}": v for k, v in tower.state_dict().items() if not k.startswith("head.")})
    state.update({f"model.connector.{k}": v for k, v in connector.connector.state_dict().items()})
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ExportError(f"the towers do not map onto Idefics2: missing {missing[:5]}, unexpected {unexpected[:5]}")
    tok = backbone.tokenizer
    model.generation_config = GenerationConfig(eos_token_id=end_of_turn_id(tok), pad_token_id=backbone.pad_id)
    return model.eval()


@torch.no_grad()
def check_image_features(backbone: Backbone, connector: Idefics2StyleConnector, model, tol: float = 1e-4) -> None:
    """The export's image path (Idefics2's vision model, which numbers patch positions its own way, then the
    connector) against training's (the SigLIP tower, then the connector), on one random image."""
    size = model.config.vision_config.image_size
    pixels = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    ours = connector(backbone.vision_features(pixels))[:, 1:-1]
    theirs = model.model.get_image_features(pixels.unsqueeze(1)).pooler_output[0].unsqueeze(0)
    err = float((ours - theirs).abs().max() / ours.abs().max().clamp_min(1e-12))
    if err > tol:
        raise ExportError(f"the exported model's image tokens differ from training's by {err:.2e} (relative; "
                          f"at most {tol:g} allowed): the vision tower does not map onto Idefics2's")


def image_processor_like(image_processor):
    """Idefics2's image processor doing what the training tower's did: the same fixed size, resampling,
    scale and normalisation, the same backend (PIL or torchvision); no splitting, no aspect-ratio resize."""
    p = image_processor
    size = p.size if isinstance(p.size, dict) else {k: getattr(p.size, k, None) for k in ("height", "width")}
    if not (size.get("height") and size.get("width")) or getattr(p, "do_center_crop", False):
        raise ExportError(f"the vision tower's image processor ({type(p).__name__}, size {size}) does not resize to a "
                          "fixed height x width without cropping, which Idefics2's processor cannot repeat")
    if type(p).__name__.endswith("Pil"):  # training ran PIL (no torchvision): the torchvision module would not import
        from transformers.models.idefics2.image_processing_pil_idefics2 import Idefics2ImageProcessorPil as cls
    else:
        from transformers.models.idefics2.image_processing_idefics2 import Idefics2ImageProcessor as cls
    return cls(do_resize=True, size={"height": size["height"], "width": size["width"]}, resample=p.resample,
               do_rescale=p.do_rescale, rescale_factor=p.rescale_factor, do_normalize=p.do_normalize,
               image_mean=p.image_mean, image_std=p.image_std, do_convert_rgb=True, do_pad=True,
               do_image_splitting=False)


def idefics2_processor(backbone: Backbone, num_latents: int) -> Idefics2Processor:
    tok = backbone.tokenizer
    if not getattr(tok, "chat_template", None):
        raise ExportError("the LLM's tokenizer has no chat_template: the export's processor could not render "
                          "the training prompt")
    template = CHAT_TEMPLATE_PREFIX + tok.chat_template
    return Idefics2Processor(image_processor_like(backbone.image_processor), tok, image_seq_len=num_latents,
                             chat_template=template)
