import sys

import pytest
import torch

from vlmtrack.data.dataset import collate
from vlmtrack.data.prompt import IGNORE_INDEX, encode_sample
from vlmtrack.model.backbone import ablate, derangement, load_backbone
from vlmtrack.model.connector import Connector


def tiny_batch(bb, captions, num_latents=4):
    items = []
    for i, cap in enumerate(captions):
        enc = encode_sample(bb.tokenizer, "<image>\nDescribe the image concisely.", cap, bb.image_token_id,
                            num_latents, 512)
        items.append({"input_ids": enc.input_ids, "labels": enc.labels, "pixel_values": torch.randn(3, 32, 32),
                      "bucket": "short", "label_len": enc.label_len, "num_supervised": enc.num_supervised,
                      "truncated": enc.truncated, "id": str(i), "image_relpath": f"{i}.jpg"})
    return collate(items, bb.pad_id)


def test_loss_at_label_positions_equals_full_logits_recomputation(tiny_paths):
    bb = load_backbone(str(tiny_paths["llm"]), str(tiny_paths["vision"]))
    batch = tiny_batch(bb, ["a red circle", "an image of two shapes on a gray background: a small red circle at "
                                            "the left and a large blue square at the right"])
    torch.manual_seed(0)
    conn = Connector(bb.vision_dim, bb.llm_dim, 4, 1, 2)
    visual = conn(bb.vision_features(batch.pixel_values))
    sums = bb.token_losses(batch.input_ids, batch.labels, visual.unsqueeze(0))[0]
    # independent: full-vocabulary logits over the whole sequence, then mask
    logits = bb.llm(inputs_embeds=bb.embed(batch.input_ids, visual), attention_mask=batch.attention_mask).logits
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), batch.labels[:, 1:],
                                           ignore_index=IGNORE_INDEX, reduction="none")
    assert torch.allclose(sums, ce.sum(1), atol=1e-4)
    assert batch.num_supervised.tolist() == (batch.labels != IGNORE_INDEX).sum(1).tolist()
    token_weighted = sums.sum() / batch.num_supervised.sum()
    mean_of_means = (sums / batch.num_supervised).mean()
    assert batch.num_supervised[0] != batch.num_supervised[1]
    assert abs(token_weighted - mean_of_means) > 1e-4


def test_stacked_connectors_equal_separate_passes(tiny_paths):
    bb = load_backbone(str(tiny_paths["llm"]), str(tiny_paths["vision"]))
    batch = tiny_batch(bb, ["a red circle", "a small blue square at the left of a pink background"])
    feats = bb.vision_features(batch.pixel_values)
    conns = [Connector(bb.vision_dim, bb.llm_dim, 4, 1, 2, vision_ln=ln) for ln in (False, True)]
    stacked = bb.token_losses(batch.input_ids, batch.labels,
                              torch.stack([c(feats) for c in conns]))
    for k, c in enumerate(conns):
        alone = bb.token_losses(batch.input_ids, batch.labels, c(feats).unsqueeze(0))[0]
        assert torch.allclose(stacked[k], alone, atol=1e-5)


def test_towers_frozen_only_connector_trains(tiny_paths):
    bb = load_backbone(str(tiny_paths["llm"]), str(tiny_paths["vision"]))
    assert not any(p.requires_grad for p in bb.llm.parameters())
    assert not any(p.requires_grad for p in bb.tower.parameters())
    assert not bb.llm.training and not bb.tower.training


def test_the_towers_unused_pooling_head_is_not_run(tiny_paths, monkeypatch):
    from transformers import AutoModel

    bb = load_backbone(str(tiny_paths["llm"]), str(tiny_paths["vision"]))
    full = AutoModel.from_pretrained(str(tiny_paths["vision"]))
    full = getattr(full, "vision_model", full).eval()
    assert full.use_head and not bb.tower.use_head
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = full(pixel_values=pixels).last_hidden_state
    monkeypatch.setattr(type(bb.tower.head), "forward", lambda *a, **k: pytest.fail("pooling head ran"))
    assert torch.equal(bb.vision_features(pixels), expected)


def test_derangement_has_no_fixed_point():
    g = torch.Generator().manual_seed(0)
    for n in range(2, 40):
        for _ in range(5):
            p = derangement(n, g)
            assert sorted(p.tolist()) == list(range(n)) and not (p == torch.arange(n)).any()


def test_ablations_replace_features():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, 8) * 3 + 2
    shuffled = ablate(x, "shuffled", g)
    assert all(not torch.equal(shuffled[i], x[i]) for i in range(6))
    assert sorted(shuffled[:, 0, 0].tolist()) == sorted(x[:, 0, 0].tolist())
    assert torch.count_nonzero(ablate(x, "zero", g)) == 0
    noise = ablate(torch.randn(64, 50, 8) * 3 + 2, "noise", g)
    assert abs(noise.mean() - 2) < 0.1 and abs(noise.std() - 3) < 0.1
    assert torch.equal(ablate(x, "correct", g), x)


def test_the_pil_image_processor_is_asked_for_by_name_where_torchvision_does_not_import(tiny_paths, monkeypatch):
    import logging
    import types

    from vlmtrack.model.backbone import image_processor_backend

    monkeypatch.setitem(sys.modules, "torchvision", None)  # absent or broken: `import torchvision` raises
    assert image_processor_backend() == {"backend": "pil"}
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("transformers").addHandler(handler)
    try:
        bb = load_backbone(str(tiny_paths["llm"]), str(tiny_paths["vision"]))
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    assert type(bb.image_processor).__name__.endswith("Pil")
    assert [r.getMessage() for r in records if r.levelno >= logging.WARNING] == []
    monkeypatch.setitem(sys.modules, "torchvision", types.ModuleType("torchvision"))  # one that imports
    assert image_processor_backend() == {}
