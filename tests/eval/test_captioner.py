"""The captioner behind the captioning model: the golden path's captions from decoded images, and a request's
generation parameters checked and applied."""
import pytest
import torch
from PIL import Image

from tests.helpers.tiny_models import tiny_config
from vlmtrack.config import EvalConfig
from vlmtrack.data.dataset import load_image
from vlmtrack.data.prompt import CAPTION_INSTRUCTION
from vlmtrack.eval.captioner import Captioner, RequestError, generation_settings
from vlmtrack.eval.golden_gen import generate_golden
from vlmtrack.model.backbone import load_backbone
from vlmtrack.model.connector import Connector


def test_overrides_change_only_this_call_and_bad_values_are_named():
    run = EvalConfig(max_new_tokens=64, temperature=0.2, top_p=0.9)
    got = generation_settings(run, {"max_new_tokens": 5, "temperature": None, "top_p": 1})
    assert (got.max_new_tokens, got.temperature, got.top_p) == (5, 0.2, 1.0)
    assert (run.max_new_tokens, run.top_p) == (64, 0.9)
    with pytest.raises(RequestError, match=r"max_new_tokens must be at least 1, got 0; top_p must be in \(0, 1\]"):
        generation_settings(run, {"max_new_tokens": 0, "top_p": 1.5})
    with pytest.raises(RequestError, match=r"temperature must be ≥ 0"):
        generation_settings(run, {"temperature": -1})
    with pytest.raises(RequestError, match=r"unknown generation parameter\(s\) \['top_k'\]"):
        generation_settings(run, {"top_k": 5})


def test_captions_from_images_are_the_golden_dumps(tiny_paths, tmp_path):
    """An image captioned through the captioning model's path gets the caption the golden dump gives it with the
    same instruction, settings and seed; max_new_tokens from a request bounds it."""
    cfg = tiny_config(tiny_paths, tmp_path)
    cfg.eval.temperature, cfg.eval.max_new_tokens = 0.7, 6  # sampled: the seed must match too
    backbone = load_backbone(cfg.model.llm, cfg.model.vision)
    torch.manual_seed(0)
    connector = Connector(backbone.vision_dim, backbone.llm_dim, cfg.model.num_latents, cfg.model.resampler_depth,
                          cfg.model.resampler_heads)
    images = sorted(p.relative_to(tiny_paths["images"]) for p in tiny_paths["images"].rglob("*.jpg"))[:3]
    items = [{"id": str(i), "bucket": "short", "gt_text": "", "image_relpath": str(rel), "label_len": 0}
             for i, rel in enumerate(images)]
    cpu = torch.device("cpu")
    golden = generate_golden(backbone, [connector], items, {it["id"]: CAPTION_INSTRUCTION for it in items},
                             tiny_paths["images"], cfg.model.num_latents, cfg.eval, cpu, torch.float32)[0]
    captioner = Captioner(backbone, connector, cfg, cpu, torch.float32, CAPTION_INSTRUCTION)
    decoded = [load_image(tiny_paths["images"], str(rel)) for rel in images]
    assert captioner.caption(decoded) == [r["pred_text"] for r in golden]
    assert any(r["pred_text"] for r in golden)
    short = captioner.caption([Image.new("RGB", (20, 20), "red")], max_new_tokens=1)
    assert len(short) == 1 and len(short[0].split()) <= 1


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
def test_a_saved_connector_loads_and_captions_on_the_device(device, tiny_paths, tmp_path):
    """load_captioner (what the captioning model's load runs) on CPU and CUDA: the device's own precision
    (bf16 on CUDA), whatever the run's config said."""
    import json

    from safetensors.torch import save_file

    from vlmtrack.config import dump_yaml
    from vlmtrack.eval.captioner import load_captioner

    cfg = tiny_config(tiny_paths, tmp_path)
    cfg.train.device, cfg.train.precision = "cpu", "fp32"  # where it trained: not where it is loaded
    dump_yaml(cfg, tmp_path / "config.yaml")
    backbone = load_backbone(cfg.model.llm, cfg.model.vision)
    connector = Connector(backbone.vision_dim, backbone.llm_dim, cfg.model.num_latents, cfg.model.resampler_depth,
                          cfg.model.resampler_heads)
    (tmp_path / "ckpt").mkdir()
    save_file(connector.state_dict(), str(tmp_path / "ckpt" / "connector.safetensors"))
    (tmp_path / "ckpt" / "connector.json").write_text(json.dumps({"connector": connector.config, "step": 0}))
    captioner = load_captioner(tmp_path / "ckpt", tmp_path / "config.yaml", cfg.model.llm, cfg.model.vision,
                               CAPTION_INSTRUCTION, device)
    assert captioner.device.type == device and next(captioner.connector.parameters()).device.type == device
    assert captioner.dtype == (torch.bfloat16 if device == "cuda" else torch.float32)
    captions = captioner.caption([Image.new("RGB", (30, 30), "red"), Image.new("RGB", (50, 20), "blue")],
                                 max_new_tokens=4)
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)
