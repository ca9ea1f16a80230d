import torch
from torch.utils.data._utils.pin_memory import pin_memory

from tests.helpers.tiny_models import tiny_config
from vlmtrack.data.dataset import CaptionDataset, collate, join_batches
from vlmtrack.data.pipeline import prepare_data
from vlmtrack.model.backbone import load_backbone


def tiny_dataset(tiny_paths, tmp_path, dtype=torch.float32, pixel_dtype=torch.float32):
    cfg = tiny_config(tiny_paths, tmp_path / "out")
    bb = load_backbone(cfg.model.llm, cfg.model.vision, dtype)
    data = prepare_data(cfg, bb.tokenizer, tmp_path / "out")
    ds = CaptionDataset(data.samples, data.metas, data.split.eval[:4], bb.tokenizer, bb.image_processor,
                        data.image_root, bb.image_token_id, 4, 512, pixel_dtype=pixel_dtype)
    return bb, ds


def test_the_loaders_pinning_reaches_every_tensor_of_a_batch(tiny_paths, tmp_path, monkeypatch):
    """DataLoader(pin_memory=True) pins a custom batch type only through its own pin_memory(): without it
    every copy to the GPU came from pageable memory. (CPU-only torch cannot pin, so pinning is recorded.)"""
    bb, ds = tiny_dataset(tiny_paths, tmp_path)
    batch = collate([ds[i] for i in range(4)], bb.pad_id)
    pinned = []

    def fake_pin(self):
        out = self.clone()
        pinned.append(out)
        return out

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    fields = {name: getattr(batch, name) for name in ("input_ids", "attention_mask", "labels", "pixel_values")}
    out = pin_memory(batch)
    assert out is batch and batch.features is None
    for name, before in fields.items():
        after = getattr(out, name)
        assert any(after is p for p in pinned), f"{name} was not pinned"
        assert torch.equal(after, before)
    assert len(pinned) == 4 and out.ids == batch.ids and out.bucket == batch.bucket


def test_pixels_in_the_towers_dtype_give_the_towers_same_output(tiny_paths, tmp_path):
    """A bf16 tower casts its input to bf16 first: the workers casting it instead halve the bytes copied
    and change no feature."""
    bb, wide = tiny_dataset(tiny_paths, tmp_path, dtype=torch.bfloat16)
    _, narrow = tiny_dataset(tiny_paths, tmp_path / "b", dtype=torch.bfloat16, pixel_dtype=bb.tower_dtype)
    px32 = collate([wide[i] for i in range(4)], bb.pad_id).pixel_values
    px16 = collate([narrow[i] for i in range(4)], bb.pad_id).pixel_values
    assert bb.tower_dtype == torch.bfloat16
    assert px32.dtype == torch.float32 and px16.dtype == torch.bfloat16
    assert torch.equal(px16, px32.to(torch.bfloat16))
    assert torch.equal(bb.vision_features(px16), bb.vision_features(px32))


def test_a_samples_vision_bytes_are_those_its_batch_carries(tiny_paths, tmp_path):
    """What the loader's in-flight cap (data/loader.loader_sizing) counts a batch as."""
    bb, wide = tiny_dataset(tiny_paths, tmp_path)
    _, narrow = tiny_dataset(tiny_paths, tmp_path / "b", pixel_dtype=torch.bfloat16)
    for ds in (wide, narrow):
        pixels = collate([ds[i] for i in range(4)], bb.pad_id).pixel_values
        assert ds.vision_bytes() * 4 == pixels.numel() * pixels.element_size()
    assert narrow.vision_bytes() * 2 == wide.vision_bytes()
    wide.image_processor = object()  # a processor that does not say its output size: no cap
    assert wide.vision_bytes() == 0


def test_joined_pieces_are_the_batch_collated_whole(tiny_paths, tmp_path):
    """An eval batch loaded in pieces by several workers (data/loader.loader) is joined into the very batch
    collating all its items gives: re-padded to the widest piece, every field in order."""
    bb, ds = tiny_dataset(tiny_paths, tmp_path)
    items = [ds[i] for i in range(4)]
    widths = [len(it["input_ids"]) for it in items]
    assert len(set(widths)) > 1, "the pieces must differ in width for the re-padding to be tested"
    whole = collate(items, bb.pad_id)
    bad = {"skipped": {"id": "x", "image_relpath": "x.jpg", "reason": "cannot be decoded"}}
    pieces = [collate(items[:1], bb.pad_id), collate([bad], bb.pad_id), collate(items[1:], bb.pad_id)]
    joined = join_batches(pieces, bb.pad_id)
    for name in ("input_ids", "attention_mask", "labels", "pixel_values", "label_len", "num_supervised", "truncated"):
        assert torch.equal(getattr(joined, name), getattr(whole, name)), name
    assert joined.features is None
    assert (joined.ids, joined.bucket, joined.image_relpaths) == (whole.ids, whole.bucket, whole.image_relpaths)
    assert joined.skipped == [bad["skipped"]]
    only_bad = join_batches([collate([bad], bb.pad_id), collate([bad], bb.pad_id)], bb.pad_id)
    assert len(only_bad) == 0 and len(only_bad.skipped) == 2
