"""config -> reader -> metadata -> split -> golden set: everything a run needs before the model."""
from __future__ import annotations

import gc
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from vlmtrack.config import Config
from vlmtrack.data.dataset import image_problems
from vlmtrack.data.golden import default_golden_path, golden_hash, load_or_create_golden
from vlmtrack.data.label_lengths import caption_lengths
from vlmtrack.data.llava import (DataError, Sample, SampleMeta, bad_records_text, listed, metadata, missing_images,
                                 read_json_list, sort_records)
from vlmtrack.data.split import Split, content_hash, load_or_build_split, split_path


@dataclass
class RunData:
    samples: list[Sample]
    metas: list[SampleMeta]
    split: Split
    golden: list[dict]
    golden_path: Path
    golden_hash: str
    image_root: Path
    dataset_name: str
    skipped: list[dict] = field(default_factory=list)  # the records data.on_bad_record=skip left out, with reasons


# Under the run's output folder, each an artifact of its MLflow run, one {id, ..., reason} a line: the records
# data.on_bad_record=skip left out before the run (train/setup.py writes them), and the samples training
# skipped because their image would not decode (data.on_bad_image=skip; train/step.py).
SKIPPED_RECORDS = "skipped_records.jsonl"
BAD_SAMPLES = "bad_samples.jsonl"


@dataclass
class Records:
    """A data file's records as checked before the run."""
    samples: list[Sample]  # every record whose metadata is good, in file order (label lengths are kept for these)
    skipped: list[dict]  # {id, index, image, reason} in file order: bad metadata and missing images (skip mode)
    missing: set[str]  # image paths with no file under the image root

    def usable(self, lengths: list[int]) -> tuple[list[Sample], list[int]]:
        """The samples whose image exists, with their label lengths."""
        if not self.missing:
            return self.samples, lengths
        keep = [i for i, s in enumerate(self.samples) if s.image_relpath not in self.missing]
        return [self.samples[i] for i in keep], [lengths[i] for i in keep]


TRAIN_CONTEXT, EVAL_CONTEXT, GOLDEN_CONTEXT = "train", "eval", "golden"


@dataclass(frozen=True)
class DatasetRecord:
    """One data set a run reads, as its lineage names it (in MLflow: a dataset input of the run)."""
    context: str  # train | eval | golden: what the run uses it for
    name: str
    digest: str  # our content hash: equal digests, the same samples
    source: str  # the file that lists its samples
    profile: dict


def lineage(data: RunData, data_path: str) -> list[DatasetRecord]:
    """The train split, the eval set and the golden set of a run, digested by the hashes the run's tags and
    the sweep's comparability checks already use."""
    split, name = data.split, data.dataset_name
    listed = str(split.path.resolve()) if split.path else str(Path(data_path).resolve())
    return [
        DatasetRecord(TRAIN_CONTEXT, f"{name}-train", split.train_hash, listed,
                      {"num_rows": len(split.train), "data_file": str(Path(data_path).resolve())}),
        DatasetRecord(EVAL_CONTEXT, f"{name}-eval", split.eval_hash, listed,
                      {"num_rows": len(split.eval), "buckets": split.bucket_counts}),
        DatasetRecord(GOLDEN_CONTEXT, f"{name}-golden{len(data.golden)}", data.golden_hash,
                      str(Path(data.golden_path).resolve()), {"num_rows": len(data.golden)}),
    ]


def dataset_name(cfg: Config) -> str:
    return cfg.data.dataset_name or Path(cfg.data.data_path).stem


def no_timing(name: str):
    """prepare_data's default `phase`: times nothing."""
    return nullcontext()


@contextmanager
def gc_paused():
    """The cyclic garbage collector off for the block, as it was afterwards."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def prepare_data(cfg: Config, tokenizer, out_dir: Path, phase=no_timing) -> RunData:
    """`phase(name)` is a context manager around each step (benchmarks/startup.py times them with it)."""
    # The collector would walk the start's millions of new objects (parsed JSON, samples, metadata) again
    # and again, though none of them is part of a cycle: paused, JSON, validation and split take ~40% less.
    with gc_paused():
        return read_and_split(cfg, tokenizer, out_dir, phase)


# The records check_inputs checked before the MLflow run existed, for the run to take instead of reading the
# file again: (data file's resolved path, size, mtime, image root, on_bad_record) -> Records; one at a time.
_CHECKED: dict[tuple, Records] = {}


def _checked_key(cfg: Config, data_path: Path, image_root: Path) -> tuple:
    st = data_path.stat()
    return str(data_path.resolve()), st.st_size, st.st_mtime_ns, str(image_root.resolve()), cfg.data.on_bad_record


def image_root_of(cfg: Config) -> Path:
    d = cfg.data
    image_root = Path(d.image_folder) if d.image_folder else Path(d.data_path).parent
    if not image_root.is_dir():
        raise DataError(f"image folder '{image_root}' does not exist: set data.image_folder")
    return image_root


def check_inputs(cfg: Config) -> None:
    """What can be checked before a run is created, so that a typo in a path, a bad record or a missing image
    costs seconds and leaves no FAILED MLflow run behind: the image folder, the data file, every record in it
    and that every record's image exists."""
    image_root = image_root_of(cfg)
    data_path = Path(cfg.data.data_path)
    with gc_paused():
        records = check_data(cfg, data_path, image_root)
    _CHECKED.clear()
    _CHECKED[_checked_key(cfg, data_path, image_root)] = records


def check_data(cfg: Config, data_path: Path, image_root: Path, phase=no_timing) -> Records:
    """Every record's metadata, and that its image file exists (without opening it: one listing per image
    folder, each distinct path looked up once). A bad record is refused (data.on_bad_record=error) or left out
    and listed with its reason (skip)."""
    with phase("JSON read"):
        raw = read_json_list(data_path)
    with phase("validation (records)"):
        samples, bad = sort_records(raw)
        total = len(raw)
        del raw  # the parsed JSON is the start's largest object: not held while the rest runs
    with phase("image existence (distinct images)"):
        missing = set(missing_images(image_root, [s.image_relpath for s in samples]))
    absent = [{"id": s.id, "index": s.index, "image": s.image_relpath,
               "reason": f"image '{s.image_relpath}' not found under {image_root}"}
              for s in samples if s.image_relpath in missing] if missing else []
    if (bad or absent) and cfg.data.on_bad_record == "error":
        raise DataError(refusal(data_path, image_root, total, bad, absent))
    if len(samples) == len(absent):
        raise DataError(f"{data_path}: no records" if not total else
                        f"{data_path}: no usable records\n" + refusal(data_path, image_root, total, bad, absent))
    return Records(samples, sorted(bad + absent, key=lambda r: r["index"]), missing)


def refusal(data_path: Path, image_root: Path, total: int, bad: list[dict], absent: list[dict]) -> str:
    """data.on_bad_record=error's message: every bad record (50 shown), every missing image (20 shown, by id and
    path), and the fixes, skipping among them."""
    parts = []
    if bad:
        parts.append(bad_records_text(data_path, bad, total,
                                      "fix or remove them, or set data.on_bad_record=skip to train on the rest"))
    if absent:
        parts.append(
            f"{data_path}: {len(absent)} record(s) of {total} name an image that is not under {image_root}; put the "
            f"images there, point data.image_folder at their folder, or set data.on_bad_record=skip to train "
            f"without them:\n  " + listed([f"id={r['id']}: {r['image']}" for r in absent], 20))
    return "\n".join(parts)


def read_and_split(cfg: Config, tokenizer, out_dir: Path, phase=no_timing) -> RunData:
    d = cfg.data
    data_path = Path(d.data_path)
    image_root = image_root_of(cfg)
    records = _CHECKED.get(_checked_key(cfg, data_path, image_root)) if data_path.is_file() else None
    if records is None:
        records = check_data(cfg, data_path, image_root, phase)
    with phase("tokenising (label lengths)"):
        # counted for every record with good metadata, so the lengths kept on disk do not depend on which
        # images exist today
        lengths = caption_lengths(records.samples, tokenizer, data_path,
                                  split_path(out_dir, d.split_seed, d.eval_size).parent)
        samples, lengths = records.usable(lengths)
        metas = metadata(samples, lengths, d.len_buckets, d.bucket_names)
    with phase("split"):
        fingerprint = content_hash([[m.id, m.label_len] for m in metas])
        split = load_or_build_split(
            metas, d.bucket_names, out_dir, eval_size=d.eval_size, max_samples=d.max_samples, seed=d.split_seed,
            mode=d.split_mode, edges=d.len_buckets, data_fingerprint=fingerprint,
        )
    with phase("eval images decode"):
        check_eval_images(image_root, metas, split)
    name = dataset_name(cfg)
    gpath = Path(d.golden_set_path) if d.golden_set_path else default_golden_path(name, d.golden_size)
    with phase("golden set"):
        golden = load_or_create_golden(gpath, split, metas, samples, d.bucket_names, d.golden_counts, d.golden_seed)
    return RunData(samples, metas, split, golden, gpath, golden_hash(golden), image_root, name,
                   records.skipped)


def check_eval_images(image_root: Path, metas: list[SampleMeta], split: Split) -> None:
    problems = image_problems(image_root, [metas[i].image_relpath for i in split.eval])
    bad = [f"id={metas[i].id}: {p}" for i, p in zip(split.eval, problems) if p]
    if bad:
        raise DataError(f"{len(bad)} eval image(s) cannot be used; the eval set must not change silently, so fix "
                        f"or remove them from the data (then delete {split.path} to rebuild the split):\n  "
                        + listed(bad, 20))
