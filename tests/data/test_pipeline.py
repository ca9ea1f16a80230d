"""prepare_data's own pieces."""
import gc
import json
import shutil

import pytest

from tests.helpers.tiny_models import tiny_config
from vlmtrack.data import pipeline
from vlmtrack.data.llava import DataError
from vlmtrack.data.pipeline import check_inputs, gc_paused, prepare_data
from vlmtrack.data.split import split_path
from vlmtrack.model.backbone import load_tokenizer


def test_gc_paused_restores_the_collectors_state():
    assert gc.isenabled()
    with pytest.raises(RuntimeError):
        with gc_paused():
            assert not gc.isenabled()
            raise RuntimeError
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # a caller's own choice is left alone
    finally:
        gc.enable()


def web_set(tiny_paths, tmp_path, edit, images=None, **config):
    """The tiny data set with `edit` applied to its records (a web set's bad records), as a run's config."""
    records = json.loads(tiny_paths["data"].read_text())
    edit(records)
    path = tmp_path / "web.json"
    path.write_text(json.dumps(records))
    cfg = tiny_config(dict(tiny_paths, data=path, images=images or tiny_paths["images"]), tmp_path / "out")
    for key, value in config.items():
        setattr(cfg.data, key, value)
    return records, cfg


def test_missing_images_are_refused_before_the_run_by_id_and_path_with_the_fix(tiny_paths, tmp_path):
    """A missing image was found only when training reached it (eval: the run stopped naming a path). Now
    the check before the run refuses the file: the count, 20 records by id and path, and the fixes."""
    def edit(records):
        for r in records[10:35]:
            r["image"] = f"gone/{r['id']}.jpg"
        records[40]["id"] = None

    records, cfg = web_set(tiny_paths, tmp_path, edit)
    with pytest.raises(DataError) as err:
        check_inputs(cfg)
    msg = str(err.value)
    assert f"25 record(s) of 160 name an image that is not under {tiny_paths['images']}" in msg
    for r in records[10:30]:
        assert f"id={r['id']}: gone/{r['id']}.jpg" in msg
    assert f"id={records[30]['id']}:" not in msg and "... and 5 more" in msg
    assert "point data.image_folder at their folder, or set data.on_bad_record=skip" in msg
    assert "1 bad record(s) of 160" in msg and "id=<record 40>: 'id' must be" in msg  # both kinds, one refusal


def test_skip_leaves_bad_records_out_and_gives_the_same_split_on_every_start(tiny_paths, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(tiny_paths["images"], images)

    def edit(records):
        records[3]["id"] = None
        records[5]["image"] = records[9]["image"] = "gone/a.jpg"  # two records, one missing image
        records[7]["conversations"][1]["value"] = " "

    records, cfg = web_set(tiny_paths, tmp_path, edit, images, on_bad_record="skip")
    tok = load_tokenizer(cfg.model.llm)
    check_inputs(cfg)
    data = prepare_data(cfg, tok, cfg.output_dir)
    assert [(r["id"], r["index"], r["image"]) for r in data.skipped] == [
        ("<record 3>", 3, records[3]["image"]), (records[5]["id"], 5, "gone/a.jpg"),
        (records[7]["id"], 7, records[7]["image"]), (records[9]["id"], 9, "gone/a.jpg")]
    assert data.skipped[1]["reason"] == f"image 'gone/a.jpg' not found under {images}"
    assert "empty caption" in data.skipped[2]["reason"] and "'id' must be" in data.skipped[0]["reason"]
    split = data.split
    used = {data.metas[i].id for i in split.train + split.eval}
    assert len(split.train) + len(split.eval) == len(data.samples) == 156 and len(used) == 156
    assert not used & {records[i]["id"] for i in (5, 7, 9)}
    pipeline._CHECKED.clear()  # a restart: read and checked again, the same records left out
    again = prepare_data(cfg, tok, cfg.output_dir)
    assert (again.split.eval_hash, again.split.train_hash, again.split.path) == (
        split.eval_hash, split.train_hash, split_path(cfg.output_dir, cfg.data.split_seed, cfg.data.eval_size))
    assert again.skipped == data.skipped
    (images / "gone").mkdir()
    shutil.copy(images / records[0]["image"], images / "gone" / "a.jpg")  # the image is back: other records
    with pytest.raises(DataError, match="the records data.on_bad_record=skip left out"):
        prepare_data(cfg, tok, cfg.output_dir)


def test_skip_with_nothing_usable_is_refused_with_every_reason(tiny_paths, tmp_path):
    def edit(records):
        for r in records:
            r["image"] = "gone.jpg"

    _, cfg = web_set(tiny_paths, tmp_path, edit, on_bad_record="skip")
    with pytest.raises(DataError, match=r"no usable records\n.*160 record\(s\) of 160 name an image"):
        check_inputs(cfg)
