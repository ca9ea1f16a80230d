import json
import random

import pytest

from vlmtrack.data.golden import load_or_create_golden
from vlmtrack.data.llava import DataError, Sample, SampleMeta
from vlmtrack.data.split import allocate, balanced_targets, build_split, load_or_build_split

NAMES = ["short", "medium", "long"]
EDGES = [0, 10, 20, 9999]


def make_metas(n_short, n_medium, n_long, seed=0):
    rng = random.Random(seed)
    lens = ([rng.randint(1, 10) for _ in range(n_short)] + [rng.randint(11, 20) for _ in range(n_medium)]
            + [rng.randint(21, 40) for _ in range(n_long)])
    rng.shuffle(lens)
    bucket = lambda n: "short" if n <= 10 else "medium" if n <= 20 else "long"  # noqa: E731
    metas = [SampleMeta(i, f"{i:06d}", f"{i // 100:05d}/{i:06d}.jpg", n, bucket(n)) for i, n in enumerate(lens)]
    samples = [Sample(i, m.id, m.image_relpath, "<image>\nDescribe.", f"caption {i}") for i, m in enumerate(metas)]
    return metas, samples


def split_for(metas, tmp_path, **kw):
    args = dict(eval_size=300, max_samples=0, seed=42, mode="stratified_len", edges=EDGES, data_fingerprint="f")
    args.update(kw)
    return load_or_build_split(metas, NAMES, tmp_path, **args)


def test_balanced_counts():
    assert balanced_targets(2000, 3) == [666, 666, 668]
    metas, _ = make_metas(1000, 1000, 1000)
    s = build_split(metas, NAMES, 2000, 0, 42)
    assert s.bucket_counts == {"short": 666, "medium": 666, "long": 668}


def test_fill_rule_when_a_bucket_is_short():
    assert allocate([666, 666, 668], [100, 5000, 5000]) == [100, 1232, 668]  # short -> medium
    assert allocate([666, 666, 668], [5000, 5000, 10]) == [666, 1324, 10]  # last -> previous
    assert allocate([666, 666, 668], [10, 20, 5000]) == [10, 20, 1970]
    metas, _ = make_metas(100, 1500, 1500)
    s = build_split(metas, NAMES, 900, 0, 1)
    assert s.bucket_counts == {"short": 100, "medium": 500, "long": 300}
    with pytest.raises(DataError, match="available"):
        allocate([10, 10, 10], [5, 5, 5])


def test_train_eval_disjoint_and_max_samples_bounds_both():
    metas, _ = make_metas(2000, 2000, 2000)
    full = build_split(metas, NAMES, 600, 0, 7)
    small = build_split(metas, NAMES, 600, 1800, 7)
    assert not set(full.train) & set(full.eval)
    assert len(full.train) + len(full.eval) == len(metas)
    assert len(small.train) + len(small.eval) == 1800
    assert small.eval == full.eval  # eval independent of max_samples
    mid = build_split(metas, NAMES, 600, 3000, 7)
    assert mid.train[: len(small.train)] == small.train  # the smaller run's train is a prefix


def test_split_file_deterministic_and_reused(tmp_path):
    metas, _ = make_metas(500, 500, 500)
    a = split_for(metas, tmp_path / "a")
    b = split_for(metas, tmp_path / "b")
    c = split_for(metas, tmp_path / "c", seed=43)
    assert a.path.read_bytes() == b.path.read_bytes()
    assert a.path.name == "split_seed42_eval300.json"
    assert a.eval_hash != c.eval_hash and a.path.read_bytes() != c.path.read_bytes()
    doc = json.loads(a.path.read_text())
    assert set(doc["eval"][0]) == {"id", "bucket", "label_len", "image_path"}
    assert doc["bucket_counts"] == {"short": 100, "medium": 100, "long": 100}
    mtime = a.path.stat().st_mtime_ns
    again = split_for(metas, tmp_path / "a")
    assert again.eval == a.eval and again.train == a.train and a.path.stat().st_mtime_ns == mtime
    with pytest.raises(DataError, match=r"holds the split of another run \(data.max_samples: 0 -> 1000\)"):
        split_for(metas, tmp_path / "a", max_samples=1000)


def test_another_data_set_in_the_same_folder_says_what_differs_and_the_fix_in_one_line(tmp_path):
    metas, _ = make_metas(500, 500, 500)
    split_for(metas, tmp_path / "demo")
    other, _ = make_metas(400, 500, 600)
    with pytest.raises(DataError) as err:
        split_for(other, tmp_path / "demo", data_fingerprint="another")
    message = str(err.value)
    assert "\n" not in message and "(the data file's contents, or the records data.on_bad_record=skip left out)" in message
    assert "train.run_name=<a new name>" in message


def test_golden_from_eval_with_requested_counts_and_reused(tmp_path):
    metas, samples = make_metas(500, 500, 500)
    split = split_for(metas, tmp_path)
    path = tmp_path / "golden" / "demo_golden64.jsonl"
    items = load_or_create_golden(path, split, metas, samples, NAMES, [24, 20, 20], 123)
    eval_ids = {metas[i].id for i in split.eval}
    assert len(items) == 64 and all(it["id"] in eval_ids for it in items)
    assert [sum(it["bucket"] == b for it in items) for b in NAMES] == [24, 20, 20]
    assert set(items[0]) == {"id", "image_relpath", "gt_text", "bucket", "label_len", "split_hash"}
    assert items[0]["split_hash"] == split.eval_hash
    before = path.read_bytes()
    again = load_or_create_golden(path, split, metas, samples, NAMES, [24, 20, 20], 999)  # seed ignored: reused
    assert again == items and path.read_bytes() == before
    other = split_for(metas, tmp_path / "other", seed=5)
    with pytest.raises(DataError, match="not in this run's eval split"):
        load_or_create_golden(path, other, metas, samples, NAMES, [24, 20, 20], 123)


def test_a_split_naming_ids_gone_from_the_data_is_refused(tmp_path):
    metas, _ = make_metas(400, 400, 400)
    first = split_for(metas, tmp_path)
    assert split_for(metas, tmp_path).train == first.train  # read back
    gone = {metas[first.eval[0]].id, metas[first.train[5]].id}
    fewer = [m for m in metas if m.id not in gone]
    with pytest.raises(DataError, match="names ids that are not in the data") as e:
        split_for(fewer, tmp_path)
    assert all(i in str(e.value) for i in gone)
