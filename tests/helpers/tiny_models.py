"""A random-weight bundle (word-level tokenizer with Qwen3's template, a 1-layer Qwen3 LM, a 1-layer
SigLIP tower) and a small synthetic dataset, saved like real checkpoints, built in about a second.
For unit tests of the model, loop and eval that must not wait for the demo bundle."""
from __future__ import annotations

from pathlib import Path

from tests.helpers.tiny_tokenizer import tiny_tokenizer
from vlmtrack.config import Config
from vlmtrack.demo import synth
from vlmtrack.model.random_init import save_random_qwen3, save_random_siglip

IMAGE_SIZE = 32


def build_tiny(root: Path, num_samples: int = 160) -> dict[str, Path]:
    save_random_qwen3(root / "llm", tiny_tokenizer(), seed=0, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                      max_position_embeddings=256, tie_word_embeddings=True)
    # the tower's weights follow the LM's in seed 0's stream
    save_random_siglip(root / "vision", IMAGE_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=2, patch_size=8)
    data_path = synth.write_dataset(root / "data", num_samples, seed=3, image_size=IMAGE_SIZE)
    return {"llm": root / "llm", "vision": root / "vision", "data": data_path, "images": root / "data" / "images"}


def tiny_config(paths: dict[str, Path], out_dir: Path, **train) -> Config:
    cfg = Config()
    cfg.data.data_path, cfg.data.image_folder = str(paths["data"]), str(paths["images"])
    cfg.data.eval_size, cfg.data.golden_size, cfg.data.golden_counts = 48, 6, [2, 2, 2]
    cfg.data.golden_set_path = str(out_dir / "golden.jsonl")
    cfg.model.llm, cfg.model.vision = str(paths["llm"]), str(paths["vision"])
    cfg.model.num_latents, cfg.model.resampler_depth, cfg.model.resampler_heads = 4, 1, 2
    cfg.train.output_dir, cfg.train.batch_size, cfg.train.lr = str(out_dir), 8, 1e-3
    cfg.train.train_steps, cfg.train.save_every, cfg.train.log_every = 8, 4, 2
    cfg.train.quick_eval_steps, cfg.train.quick_eval_size = 4, 16
    cfg.eval.batch_size, cfg.eval.ablation_samples, cfg.eval.max_new_tokens = 16, 16, 8
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg
