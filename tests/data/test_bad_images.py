"""Images as web-scraped data has them: odd modes and sizes decode; broken files are named, skipped in
training under data.on_bad_image=skip (and listed), and never silently change the eval set."""
import json
import shutil

import numpy as np
import pytest
from PIL import Image
from transformers import SiglipImageProcessor

from tests.helpers.tiny_models import tiny_config
from vlmtrack.data.dataset import image_from_bytes, image_problems, load_image
from vlmtrack.data.llava import DataError
from vlmtrack.data.pipeline import BAD_SAMPLES, prepare_data
from vlmtrack.model.backbone import load_tokenizer
from vlmtrack.tracking.base import JsonlTracker
from vlmtrack.train import loop

rgb = np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)


@pytest.mark.parametrize("name,make", [
    ("l.png", lambda: Image.fromarray(rgb[..., 0], "L")),
    ("la.png", lambda: Image.fromarray(rgb[..., 0], "L").convert("LA")),
    ("p.png", lambda: Image.fromarray(rgb).convert("P")),
    ("rgba.png", lambda: Image.fromarray(rgb).convert("RGBA")),
    ("cmyk.jpg", lambda: Image.fromarray(rgb).convert("CMYK")),
    ("i16.png", lambda: Image.fromarray((rgb[..., 0].astype(np.uint16) * 257))),
    ("one.png", lambda: Image.new("RGB", (1, 1), (255, 0, 0))),
    ("wide.jpg", lambda: Image.new("RGB", (10_000, 20), (0, 0, 255))),
])
def test_odd_modes_and_sizes_decode_to_rgb(tmp_path, name, make):
    make().save(tmp_path / name)
    image = load_image(tmp_path, name)
    assert image.mode == "RGB"
    pixels = SiglipImageProcessor(size={"height": 32, "width": 32})(images=image, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 32, 32)
    if name == "i16.png":  # scaled to 8 bits, not clipped to white
        assert 0 < np.asarray(image).mean() < 250


@pytest.mark.parametrize("content,name", [(b"", "zero.jpg"), (b"not an image at all", "text.jpg")])
def test_broken_files_are_named(tmp_path, content, name):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=name):
        load_image(tmp_path, name)


def test_truncated_and_missing(tmp_path):
    Image.fromarray(rgb).save(tmp_path / "ok.jpg")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "ok.jpg").read_bytes()[:200])
    with pytest.raises(DataError, match="cut.jpg"):
        load_image(tmp_path, "cut.jpg")
    with pytest.raises(DataError, match="missing.jpg' not found"):
        load_image(tmp_path, "missing.jpg")


@pytest.fixture
def copied(tiny_paths, tmp_path):
    shutil.copytree(tiny_paths["images"].parent, tmp_path / "data")
    return dict(tiny_paths, data=tmp_path / "data" / tiny_paths["data"].name, images=tmp_path / "data" / "images")


def break_images(cfg, paths, which: str, n: int):
    data = prepare_data(cfg, load_tokenizer(cfg.model.llm), cfg.output_dir)
    positions = data.split.train if which == "train" else data.split.eval
    broken = [data.samples[i] for i in positions[:n]]
    for s in broken:
        (paths["images"] / s.image_relpath).write_bytes(b"\xff\xd8 truncated")
    shutil.rmtree(cfg.output_dir)
    return broken


def test_train_images_skipped_and_listed(copied, tmp_path):
    cfg = tiny_config(copied, tmp_path / "run", quick_eval_steps=0, train_steps=16)
    broken = break_images(cfg, copied, "train", 3)
    tracker = JsonlTracker()
    result = loop.train(cfg, tracker, log=lambda *_: None)
    assert result["status"] == "FINISHED"
    listed = [json.loads(x) for x in (tmp_path / "run" / BAD_SAMPLES).read_text().splitlines()]
    assert sorted(r["id"] for r in listed) == sorted(s.id for s in broken)
    assert all("cannot be decoded" in r["reason"] for r in listed)
    assert tracker.metrics("data_bad_images")[-1][1] == 3


def test_a_skipped_batchs_console_line_gives_every_id_and_reason(copied, tmp_path):
    """The line named the first reason alone; three images of the first batch, broken three ways."""
    from vlmtrack.data.loader import epoch_batches, epoch_order

    cfg = tiny_config(copied, tmp_path / "run", quick_eval_steps=0, train_steps=2, save_every=2)
    cfg.eval.run_ablations = False
    data = prepare_data(cfg, load_tokenizer(cfg.model.llm), cfg.output_dir)
    train = data.split.train
    first = epoch_batches(epoch_order(len(train), cfg.train.seed, 0), cfg.train.batch_size, None, cfg.train.seed, 0)[0]
    broken = [data.samples[train[k]] for k in first[:3]]
    for s, content in zip(broken, [b"", b"not an image", b"\xff\xd8 truncated"]):
        (copied["images"] / s.image_relpath).write_bytes(content)
    shutil.rmtree(cfg.output_dir)
    lines = []
    assert loop.train(cfg, JsonlTracker(), log=lines.append)["status"] == "FINISHED"
    (line,) = [x for x in lines if x.startswith("[data] skipped")]
    assert line.startswith("[data] skipped 3 sample(s) whose image cannot be used, 3 so far: ")
    for s in broken:
        assert f"id={s.id}: image '{s.image_relpath}' cannot be decoded" in line


def test_a_wholly_undecodable_last_batch_is_replaced_by_reading_on(copied, tmp_path):
    """The training loader is told the run's last step; when a whole batch was skipped the loop reads on
    past it, and the run still takes every one of its steps."""
    from vlmtrack.data.loader import epoch_batches, epoch_order

    cfg = tiny_config(copied, tmp_path / "run", quick_eval_steps=0, train_steps=6, save_every=6)
    data = prepare_data(cfg, load_tokenizer(cfg.model.llm), cfg.output_dir)
    train = data.split.train
    per_epoch = len(train) // cfg.train.batch_size
    epoch, at = divmod(cfg.train.train_steps - 1, per_epoch)
    last = epoch_batches(epoch_order(len(train), cfg.train.seed, epoch), cfg.train.batch_size, None,
                         cfg.train.seed, epoch)[at]
    for k in last:
        (copied["images"] / data.samples[train[k]].image_relpath).write_bytes(b"\xff\xd8 truncated")
    shutil.rmtree(cfg.output_dir)
    tracker = JsonlTracker()
    result = loop.train(cfg, tracker, log=lambda *_: None)
    assert result["status"] == "FINISHED" and result["step"] == 6
    listed = [json.loads(x)["id"] for x in (tmp_path / "run" / BAD_SAMPLES).read_text().splitlines()]
    assert {data.samples[train[k]].id for k in last} <= set(listed)


def test_on_bad_image_fail_names_the_sample(copied, tmp_path):
    cfg = tiny_config(copied, tmp_path / "run", quick_eval_steps=0, train_steps=16)
    cfg.data.on_bad_image = "fail"
    broken = break_images(cfg, copied, "train", 1)
    with pytest.raises(DataError, match=f"id={broken[0].id}"):
        loop.train(cfg, JsonlTracker(), log=lambda *_: None)


def test_bad_eval_image_fails_the_split_build(copied, tmp_path):
    cfg = tiny_config(copied, tmp_path / "run")
    broken = break_images(cfg, copied, "eval", 2)
    with pytest.raises(DataError, match="2 eval image") as err:
        prepare_data(cfg, load_tokenizer(cfg.model.llm), cfg.output_dir)
    assert all(f"id={s.id}: image '{s.image_relpath}' cannot be decoded" in str(err.value) for s in broken)


def test_non_ascii_and_right_to_left_captions(tmp_path):
    from tests.helpers.tiny_tokenizer import tiny_tokenizer
    from vlmtrack.data.llava import read_samples
    from vlmtrack.data.prompt import add_image_token, encode_sample

    caps = ["un cercle rouge à gauche — été", "دائرة حمراء على اليسار", "赤い円"]
    records = [{"id": str(i), "image": f"{i}.jpg", "conversations": [
        {"from": "human", "value": "<image>\nDescribe the image concisely."}, {"from": "gpt", "value": c}]}
        for i, c in enumerate(caps)]
    (tmp_path / "d.json").write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    samples = read_samples(tmp_path / "d.json")
    assert [s.caption for s in samples] == caps
    tok = tiny_tokenizer()
    iid = add_image_token(tok)
    for s in samples:
        enc = encode_sample(tok, s.human, s.caption, iid, 4, 512)
        assert enc.label_len > 0 and not enc.truncated


def test_image_problems_on_threads_reports_every_bad_image_in_order(tmp_path):
    """Enough images for the thread pool: the reasons come back in the order of the paths given."""
    rels = [f"{i}.jpg" for i in range(200)]
    for i, rel in enumerate(rels):
        if i % 50 != 7:
            Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / rel)
    (tmp_path / "107.jpg").write_bytes(b"not a jpeg")
    problems = image_problems(tmp_path, rels)
    assert len(problems) == len(rels)
    bad = [p for p in problems if p]
    assert [b.split("'")[1] for b in bad] == ["7.jpg", "57.jpg", "107.jpg", "157.jpg"]
    assert "cannot be decoded" in bad[2] and "not found" in bad[0]


@pytest.mark.parametrize("name,make", [("p.png", lambda: Image.fromarray(rgb).convert("P")),
                                       ("rgba.png", lambda: Image.fromarray(rgb).convert("RGBA")),
                                       ("cmyk.jpg", lambda: Image.fromarray(rgb).convert("CMYK"))])
def test_image_bytes_decode_as_the_file_does(tmp_path, name, make):
    """A served request's image (bytes, never a path) decodes to the same RGB pixels as the file would."""
    make().save(tmp_path / name)
    from_bytes = image_from_bytes((tmp_path / name).read_bytes(), "image 0")
    assert from_bytes.mode == "RGB" and np.array_equal(np.asarray(from_bytes), np.asarray(load_image(tmp_path, name)))


@pytest.mark.parametrize("data,why", [(b"", "not a decodable image (0 bytes"),
                                      (b"GIF89a but not an image", "not a decodable image (23 bytes"),
                                      ("a/path/on/the/server.jpg", "expected the image file's bytes, got str")])
def test_undecodable_image_bytes_are_named(data, why):
    with pytest.raises(DataError, match=r"^image 3: " + why.replace("(", r"\(")):
        image_from_bytes(data, "image 3")
