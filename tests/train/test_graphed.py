"""The fixed-shape step a CUDA graph captures, checked on CPU against the dynamic one the loop runs
eagerly; the capture itself is checked on a GPU (tests/model/test_cuda_paths.py)."""
import pytest
import torch

from tests.model.test_backbone import tiny_batch
from vlmtrack.config import ConfigError, load_config
from vlmtrack.data.prompt import IGNORE_INDEX
from vlmtrack.model.backbone import load_backbone, static_positions
from vlmtrack.model.connector import Connector
from vlmtrack.train.graphed import LABEL_STEP, SHAPE_STEP, static_inputs, use_cuda_graphs

CAPTIONS = ["a red circle", "an image of two shapes on a gray background: a small red circle at the left and a "
            "large blue square at the right", "three shapes"]


def test_static_losses_and_gradients_equal_the_dynamic_step(tiny_paths):
    bb = load_backbone(str(tiny_paths["llm"]), str(tiny_paths["vision"]))
    batch = tiny_batch(bb, CAPTIONS)
    host = static_inputs(bb, batch, num_latents=4)
    assert host["input_ids"].shape[1] % SHAPE_STEP == 0 and host["input_ids"].shape[1] >= batch.input_ids.shape[1]
    assert host["label_at"].shape[1] % LABEL_STEP == 0
    # every label sits at its position, the padding targets are ignored
    assert (host["targets"] != IGNORE_INDEX).sum(1).tolist() == batch.num_supervised.tolist()
    torch.manual_seed(0)
    conns = [Connector(bb.vision_dim, bb.llm_dim, 4, 1, 2, vision_ln=ln) for ln in (False, True)]
    features = bb.vision_features(batch.pixel_values)

    def run(static: bool):
        for c in conns:
            c.zero_grad()
        visual = torch.stack([c(features) for c in conns])
        if static:
            sums = bb.static_token_losses(host["input_ids"], host["image_at"], host["label_at"], host["targets"],
                                          visual)
        else:
            sums = bb.token_losses(batch.input_ids, batch.labels, visual)
        sums.sum().backward()
        return sums.detach(), [p.grad.clone() for c in conns for p in c.parameters()]

    (dyn, dyn_grads), (fixed, fixed_grads) = run(False), run(True)
    assert fixed.shape == (2, 3)
    assert torch.allclose(fixed, dyn, atol=1e-5), (fixed, dyn)
    for a, b in zip(dyn_grads, fixed_grads):
        assert torch.allclose(a, b, atol=1e-5)


def test_static_positions_reject_what_does_not_fit(tiny_paths):
    bb = load_backbone(str(tiny_paths["llm"]), str(tiny_paths["vision"]))
    batch = tiny_batch(bb, CAPTIONS)
    with pytest.raises(ValueError, match="label_width=2"):
        static_positions(batch.input_ids, batch.labels, bb.visual_token_ids, 4, label_width=2)
    with pytest.raises(ValueError, match="exactly 5 image positions"):
        static_positions(batch.input_ids, batch.labels, bb.visual_token_ids, 5, label_width=64)


def test_graphs_are_chosen_where_launches_dominate():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not use_cuda_graphs("auto", cpu, 4)
    assert use_cuda_graphs("auto", cuda, 24) and not use_cuda_graphs("auto", cuda, 384)
    assert use_cuda_graphs("on", cuda, 384) and not use_cuda_graphs("off", cuda, 4)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        use_cuda_graphs("on", cpu, 4)
    with pytest.raises(ConfigError, match="train.cuda_graphs must be auto, on or off, got 'maybe'"):
        load_config(None, ["train.cuda_graphs=maybe"])
    # YAML reads on/off as booleans: both settings still arrive as the words
    for word in ("on", "off"):
        cfg = load_config(None, [f"train.cuda_graphs={word}", f"data.feature_cache={word}"])
        assert (cfg.train.cuda_graphs, cfg.data.feature_cache) == (word, word)
