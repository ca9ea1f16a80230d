import json
import pickle
import shutil

import pytest
import torch
from PIL import Image

from tests.helpers.tiny_models import tiny_config
from vlmtrack.data.dataset import CaptionDataset, collate
from vlmtrack.data.llava import DataError
from vlmtrack.data.pipeline import prepare_data
from vlmtrack.model import feature_cache as fc
from vlmtrack.model.backbone import load_backbone
from vlmtrack.tracking.base import JsonlTracker
from vlmtrack.train import loop


@pytest.fixture()
def run_parts(tiny_paths, tmp_path):
    cfg = tiny_config(tiny_paths, tmp_path / "out")
    cfg.data.feature_cache_dir = str(tmp_path / "cache")
    bb = load_backbone(cfg.model.llm, cfg.model.vision)
    data = prepare_data(cfg, bb.tokenizer, tmp_path / "out")
    return cfg, bb, data


def shards(folder):
    return sorted(p.name for p in folder.glob("shard-*.json"))


def test_cached_features_are_the_towers_output_in_bf16_and_built_once(run_parts):
    cfg, bb, data = run_parts
    store = fc.run_cache_build(cfg, bb, data, torch.device("cpu"), 0, log=lambda *_: None)()
    rels = [data.metas[i].image_relpath for i in (*data.split.train, *data.split.eval)]
    assert set(store.row_of) == set(rels)
    ds = CaptionDataset(data.samples, data.metas, data.split.eval[:4], bb.tokenizer, bb.image_processor,
                        data.image_root, bb.image_token_id, 4, 512)
    live = bb.vision_features(collate([ds[i] for i in range(4)], bb.pad_id).pixel_values)
    cached = torch.stack([store.get(data.metas[i].image_relpath) for i in data.split.eval[:4]])
    assert cached.dtype == torch.bfloat16 and cached.shape == live.shape
    assert torch.equal(cached, live.to(torch.bfloat16))
    # a second run finds everything: no new shard; a pickled store (DataLoader workers) reads the same rows
    before = shards(store.folder)
    again = fc.run_cache_build(cfg, bb, data, torch.device("cpu"), 0, log=lambda *_: None)()
    assert shards(again.folder) == before and len(before) == 1
    clone = pickle.loads(pickle.dumps(store))
    assert clone._maps == {} and torch.equal(clone.get(rels[0]), store.get(rels[0]))
    # the loader's in-flight cap sees a cached sample's true size
    cached_ds = CaptionDataset(data.samples, data.metas, data.split.eval[:4], bb.tokenizer, bb.image_processor,
                               data.image_root, bb.image_token_id, 4, 512, features=store)
    features = collate([cached_ds[i] for i in range(4)], bb.pad_id).features
    assert cached_ds.vision_bytes() * 4 == features.numel() * features.element_size()


def _shared_in_worker(items, pad_id):
    return collate(items, pad_id).features.is_shared()


def test_cached_rows_are_read_in_place_into_shared_memory_and_the_file_never_changes(run_parts):
    """A row is a view of the mapped shard (no copy before collate's stack), which in a DataLoader worker
    stacks straight into shared memory; writing into a row leaves the file as it was (copy-on-write)."""
    import functools

    cfg, bb, data = run_parts
    store = fc.run_cache_build(cfg, bb, data, torch.device("cpu"), 0, log=lambda *_: None)()
    rel = data.metas[data.split.eval[0]].image_relpath
    row = store.get(rel)
    kept = row.clone()
    by_row = {where: r for r, where in store.row_of.items()}
    first, second = store.get(by_row[(0, 0)]), store.get(by_row[(0, 1)])
    gap = first.numel() * first.element_size()
    assert second.data_ptr() - first.data_ptr() == gap, "rows are views of one mapped shard, not copies"
    row.fill_(7.0)
    fresh = pickle.loads(pickle.dumps(store))
    assert torch.equal(fresh.get(rel), kept)
    ds = CaptionDataset(data.samples, data.metas, data.split.eval[:4], bb.tokenizer, bb.image_processor,
                        data.image_root, bb.image_token_id, 4, 512, features=fresh)
    dl = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=1,
                                     collate_fn=functools.partial(_shared_in_worker, pad_id=bb.pad_id))
    assert list(dl) == [True, True]


def test_cache_key_follows_the_processor_and_the_weights(run_parts, tiny_paths, tmp_path):
    cfg, bb, _ = run_parts
    key = fc.tower_fingerprint(cfg.model.vision, bb.tower, bb.image_processor)
    bb.image_processor.image_mean = [0.4, 0.4, 0.4]
    assert fc.tower_fingerprint(cfg.model.vision, bb.tower, bb.image_processor) != key
    bb.image_processor.image_mean = [0.5, 0.5, 0.5]
    copy = tmp_path / "vision-copy"
    shutil.copytree(tiny_paths["vision"], copy)
    assert fc.tower_fingerprint(str(copy), bb.tower, bb.image_processor) != key


def test_changed_and_unreadable_images(run_parts, tmp_path):
    cfg, bb, data = run_parts
    root = tmp_path / "images"
    shutil.copytree(data.image_root, root)
    rels = [data.metas[i].image_relpath for i in data.split.train[:6]]
    folder = tmp_path / "c2"
    store = fc.open_or_build(folder, root, rels, bb, torch.device("cpu"), log=lambda *_: None)
    assert len(store.row_of) == 6
    # new content under an old name is computed again (one new shard of one row), not served stale;
    # a copy of a cached image is served from its row (keyed by content); an unreadable one is left out
    Image.open(root / rels[0]).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(root / rels[0])
    shutil.copy(root / rels[1], root / rels[3])
    (root / rels[2]).write_bytes(b"")
    store = fc.open_or_build(folder, root, rels, bb, torch.device("cpu"), log=lambda *_: None)
    metas = [json.loads((folder / s).read_text()) for s in shards(folder)]
    assert sorted(m["shape"][0] for m in metas) == [1, 6]
    assert rels[2] not in store.row_of
    assert torch.equal(store.get(rels[3]), store.get(rels[1]))
    px = bb.image_processor(images=Image.open(root / rels[0]).convert("RGB"), return_tensors="pt")["pixel_values"]
    assert torch.equal(store.get(rels[0]), bb.vision_features(px)[0].to(torch.bfloat16))
    assert not list(folder.glob(".*tmp"))
    # the dataset treats an image the cache could not read as undecodable (skip policy lists it)
    ds = CaptionDataset(data.samples, data.metas, data.split.train[:6], bb.tokenizer, bb.image_processor, root,
                        bb.image_token_id, 4, 512, on_bad_image="skip", features=store)
    assert "cannot be decoded" in ds[2]["skipped"]["reason"]
    assert ds[0]["features"].dtype == torch.bfloat16
    strict = CaptionDataset(data.samples, data.metas, data.split.train[:6], bb.tokenizer, bb.image_processor,
                            root, bb.image_token_id, 4, 512, features=store)
    with pytest.raises(DataError, match="on_bad_image=skip"):
        strict[2]


def test_auto_respects_the_size_cap_and_training_matches_the_live_tower(tiny_paths, tmp_path):
    logs = []
    cached = tiny_config(tiny_paths, tmp_path / "cached")
    cached.data.feature_cache_dir = str(tmp_path / "cache")
    live = tiny_config(tiny_paths, tmp_path / "live")
    live.data.feature_cache, live.data.feature_cache_max_gib = "auto", 1e-9  # over the cap: computed live
    a = loop.train(cached, JsonlTracker(), log=logs.append)
    b = loop.train(live, JsonlTracker(), log=logs.append)
    assert any("[cache] vision features of" in line and "GiB (bf16)" in line for line in logs)
    assert any("over data.feature_cache_max_gib" in line for line in logs)
    # the only difference is the features' bf16 storage
    assert a["final_eval"]["eval_loss"] == pytest.approx(b["final_eval"]["eval_loss"], rel=2e-2)
    assert a["final_eval"]["eval_label_tokens_total"] == b["final_eval"]["eval_label_tokens_total"]


def test_a_background_build_gives_the_same_store_and_a_stopped_one_keeps_its_rows(run_parts, tmp_path):
    cfg, bb, data = run_parts
    rels = fc.split_images(data)
    first = fc.open_or_build(tmp_path / "first", data.image_root, rels, bb, torch.device("cpu"), log=lambda *_: None)
    build = fc.BackgroundBuild(lambda stop: fc.open_or_build(tmp_path / "thread", data.image_root, rels, bb,
                                                             torch.device("cpu"), log=lambda *_: None, stop=stop))
    build.stop()  # joins the thread; a build that finished first keeps its store
    if build.store is None:  # stopped before it finished: a second build completes it
        build = fc.BackgroundBuild(lambda stop: fc.open_or_build(tmp_path / "thread", data.image_root, rels, bb,
                                                                 torch.device("cpu"), log=lambda *_: None, stop=stop))
        while not build.done():
            build._thread.join(0.05)
    assert build.error is None and build.done()
    assert set(build.store.row_of) == set(first.row_of)
    assert all(torch.equal(build.store.get(r), first.get(r)) for r in rels)

    # stopped after its first batch of 4: those rows are a shard; the next build computes only the rest
    folder, logs = tmp_path / "stopped", []
    stop = __import__("threading").Event()
    real = bb.vision_features

    def features_then_stop(pixels):
        stop.set()
        return real(pixels)

    bb.vision_features = features_then_stop
    try:
        assert fc.open_or_build(folder, data.image_root, rels, bb, torch.device("cpu"), batch_size=4,
                                log=logs.append, stop=stop) is None
    finally:
        bb.vision_features = real
    assert [json.loads((folder / s).read_text())["shape"][0] for s in shards(folder)] == [4]
    assert not list(folder.glob(".*tmp"))
    distinct = int(logs[0].split("computing vision features of ")[1].split()[0])  # distinct contents
    assert any(f"build stopped with 4 of {distinct} image(s)" in line for line in logs)
    logs.clear()
    store = fc.open_or_build(folder, data.image_root, rels, bb, torch.device("cpu"), batch_size=4, log=logs.append)
    assert any(f"computing vision features of {distinct - 4} image(s)" in line for line in logs)
    assert set(store.row_of) == set(rels)
    assert all(torch.equal(store.get(r), first.get(r)) for r in rels)


def test_a_build_commits_a_shard_every_few_rows_and_one_that_dies_keeps_them(run_parts, tmp_path, monkeypatch):
    cfg, bb, data = run_parts
    rels = fc.split_images(data)[:20]
    monkeypatch.setattr(fc, "SHARD_ROWS", 4)
    folder, calls, real = tmp_path / "dies", [], bb.vision_features

    def dies_at_the_fourth_batch(pixels):
        calls.append(len(pixels))
        if len(calls) == 4:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(pixels)

    bb.vision_features = dies_at_the_fourth_batch
    try:
        with pytest.raises(RuntimeError, match="simulated"):
            fc.open_or_build(folder, data.image_root, rels, bb, torch.device("cpu"), batch_size=3, log=lambda *_: None)
    finally:
        bb.vision_features = real
    # batches of 3: a shard is committed once it holds 4 rows or more (at 6); the 3 rows after it die with it
    assert [json.loads((folder / s).read_text())["shape"][0] for s in shards(folder)] == [6]
    assert not list(folder.glob(".*tmp"))
    logs = []
    store = fc.open_or_build(folder, data.image_root, rels, bb, torch.device("cpu"), batch_size=3, log=logs.append)
    distinct = len({fc.image_hash(data.image_root, r) for r in rels})
    assert any(f"computing vision features of {distinct - 6} image(s)" in line for line in logs)
    assert set(store.row_of) == set(rels)
    fresh = fc.open_or_build(tmp_path / "fresh", data.image_root, rels, bb, torch.device("cpu"), log=lambda *_: None)
    assert all(torch.equal(store.get(r), fresh.get(r)) for r in rels)


def test_the_next_build_removes_a_dead_builds_temporary_shard_and_no_other(run_parts, tmp_path):
    import subprocess
    import sys

    cfg, bb, data = run_parts
    folder = tmp_path / "c"
    folder.mkdir()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(gone.stdout)
    host = fc._writer_tag().rsplit("-", 1)[0]
    left = folder / f".shard-1-{host}-{dead}.bin.tmp"
    mine = folder / f".shard-2-{host}-{__import__('os').getpid()}.bin.tmp"
    elsewhere = folder / f".shard-3-otherhost-{dead}.bin.tmp"
    # a container on this host name (host networking) numbers its own pids: its pid means nothing here
    other_container = folder / f".shard-4-{host.rsplit('ns', 1)[0]}ns1234-{dead}.bin.tmp"
    for f in (left, mine, elsewhere, other_container):
        f.write_bytes(b"\0" * 1024)
    logs = []
    fc.open_or_build(folder, data.image_root, fc.split_images(data)[:2], bb, torch.device("cpu"), log=logs.append)
    assert not left.exists() and mine.exists() and elsewhere.exists() and other_container.exists()
    assert any(f"left by a build whose process (pid {dead}) died" in line for line in logs)


def test_a_cache_that_would_not_leave_room_on_its_disk_is_not_built(run_parts, monkeypatch):
    """At the full set's size (558K images: ~157 GiB for SigLIP-base) a build could fill the disk the
    run's checkpoints go to. The estimate less what is already committed must fit the free space less
    KEEP_FREE_GIB: else auto computes live and `on` is refused, naming the folder, the sizes and the fixes.
    A cache already built needs no room."""
    from collections import namedtuple

    from vlmtrack.config import ConfigError

    cfg, bb, data = run_parts
    usage = namedtuple("usage", "total used free")
    free = {"gib": fc.KEEP_FREE_GIB}  # the build's rows would eat into what is kept free
    monkeypatch.setattr(fc.shutil, "disk_usage", lambda path: usage(2**40, 0, int(free["gib"] * 2**30)))
    logs = []
    cfg.data.feature_cache = "auto"
    assert fc.cache_folder(cfg, bb, data, logs.append) is None
    assert "computed live" in logs[-1] and "GiB free" in logs[-1] and str(cfg.data.feature_cache_dir) in logs[-1]
    cfg.data.feature_cache = "on"
    with pytest.raises(ConfigError, match=r"data.feature_cache=on: vision features of \d+ images need .* GiB "
                                          r"free .*data.feature_cache_dir"):
        fc.cache_folder(cfg, bb, data, logs.append)
    free["gib"] = fc.KEEP_FREE_GIB + 1.0  # room: built
    folder = fc.cache_folder(cfg, bb, data, logs.append)
    size = fc.estimate_gib(len(set(fc.split_images(data))), *fc.feature_shape(bb.tower))
    assert fc.gib_to_write(folder, size) == size
    assert fc.run_cache_build(cfg, bb, data, torch.device("cpu"), 0, logs.append)() is not None
    assert fc.gib_to_write(folder, size) < 0.1 * size  # images of equal content share rows: a little under
    free["gib"] = 0.0  # built already: nothing to write, so a full disk does not matter
    assert fc.cache_folder(cfg, bb, data, logs.append) == folder


def test_image_hashes_read_only_the_files_that_changed_since_the_memo(tiny_paths, tmp_path, monkeypatch):
    """The first open hashes every image (on threads) and keeps the hashes with each file's size, mtime and
    inode; the next open reads none; new content under an old name, a file put back by a copy and a file
    gone are seen; a memo cut short costs a rehash, not an error."""
    import os

    root = tmp_path / "images"
    shutil.copytree(tiny_paths["images"], root)
    rels = sorted(str(p.relative_to(root)) for p in root.rglob("*.jpg"))[:12]
    folder = tmp_path / "cache"
    folder.mkdir()
    real, read = fc.image_hash, []
    monkeypatch.setattr(fc, "image_hash", lambda r, rel: read.append(rel) or real(r, rel))
    first = fc.image_hashes(folder, root, rels)
    assert sorted(read) == rels and first == {rel: real(root, rel) for rel in rels}
    read.clear()
    assert fc.image_hashes(folder, root, rels) == first and read == []
    Image.open(root / rels[0]).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(root / rels[0])
    shutil.copy(root / rels[2], root / rels[1])  # same name, another file's content
    (root / rels[3]).unlink()
    again = fc.image_hashes(folder, root, rels)
    assert sorted(read) == sorted([rels[0], rels[1]])
    assert again[rels[0]] != first[rels[0]] and again[rels[1]] == first[rels[2]] and again[rels[3]] is None
    assert {r: h for r, h in again.items() if r not in rels[:4]} == {r: first[r] for r in rels[4:]}
    memo, = folder.glob(f"{fc.HASH_MEMO}-*.json")
    memo.write_text(memo.read_text()[:40])  # cut short (a full disk, a kill mid-write before the rename)
    read.clear()
    assert fc.image_hashes(folder, root, rels) == again and len(read) == len(rels) - 1
    assert not list(folder.glob(".*.tmp")) and os.listdir(folder) == [memo.name]
