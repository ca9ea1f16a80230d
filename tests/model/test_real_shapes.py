"""A SigLIP-base-shaped tower at its real resolution (224 px, patch 16: 196 patches of width 768), depth
reduced to one layer, trained through the product's loop: the path a real user's tower takes."""
from tests.helpers.tiny_models import tiny_config
from vlmtrack.model.random_init import save_random_siglip
from vlmtrack.tracking.base import JsonlTracker
from vlmtrack.train import loop
from vlmtrack.model.connector_io import load_connector_weights


def test_training_steps_with_siglip_base_shaped_tower(tiny_paths, tmp_path):
    vision = tmp_path / "siglip-base-shape"
    save_random_siglip(vision, 224, hidden_size=768, intermediate_size=3072, num_hidden_layers=1,
                       num_attention_heads=12, patch_size=16)
    paths = dict(tiny_paths, vision=vision)
    cfg = tiny_config(paths, tmp_path / "run", train_steps=2, batch_size=4, save_every=2, quick_eval_steps=0,
                      run_golden_every="never")
    cfg.data.eval_size = 48
    cfg.eval.run_ablations = False
    tracker = JsonlTracker()
    result = loop.train(cfg, tracker, log=lambda *_: None)
    assert result["final_eval"]["eval_examples_total"] == 48
    assert [s for s, _ in tracker.metrics("train_loss")] == [2]
    weights, meta = load_connector_weights(tmp_path / "run" / "checkpoints" / "step_2")
    assert meta["connector"]["vision_dim"] == 768 and weights["proj_in.weight"].shape == (32, 768)
