"""config -> reader -> metadata -> split -> golden set: everything a run needs before the model."""
from __future__ import annotations

import gc
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from vlmtrack.config import Config
from vlmtrack.data.dataset import check_images
from vlmtrack.data.golden import default_golden_path, golden_hash, load_or_create_golden
from vlmtrack.data.label_lengths import caption_lengths
from vlmtrack.data.llava import DataError, Sample, SampleMeta, check_records, metadata, read_json_list
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


# The records check_inputs validated before the MLflow run existed, for the run to take instead of reading
# the file again: (resolved path, size, mtime) -> samples; one data file at a time.
_CHECKED: dict[tuple, list[Sample]] = {}


def _file_key(data_path: Path) -> tuple:
    st = data_path.stat()
    return str(data_path.resolve()), st.st_size, st.st_mtime_ns


def image_root_of(cfg: Config) -> Path:
    d = cfg.data
    image_root = Path(d.image_folder) if d.image_folder else Path(d.data_path).parent
    if not image_root.is_dir():
        raise DataError(f"image folder '{image_root}' does not exist: set data.image_folder")
    return image_root


def check_inputs(cfg: Config) -> None:
    """What can be checked before a run is created, so that a typo in a path or a bad record costs seconds
    and leaves no FAILED MLflow run behind: the image folder, the data file and every record in it."""
    image_root_of(cfg)
    data_path = Path(cfg.data.data_path)
    with gc_paused():
        samples = check_records(read_json_list(data_path), data_path)
    _CHECKED.clear()
    _CHECKED[_file_key(data_path)] = samples


def read_and_split(cfg: Config, tokenizer, out_dir: Path, phase=no_timing) -> RunData:
    d = cfg.data
    data_path = Path(d.data_path)
    image_root = image_root_of(cfg)
    samples = _CHECKED.get(_file_key(data_path)) if data_path.is_file() else None
    if samples is None:
        with phase("JSON read"):
            raw = read_json_list(data_path)
        with phase("validation (records)"):
            samples = check_records(raw, data_path)
            del raw  # the parsed JSON is the start's largest object: not held while the rest runs
    with phase("tokenising (label lengths)"):
        lengths = caption_lengths(samples, tokenizer, data_path, split_path(out_dir, d.split_seed, d.eval_size).parent)
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
    return RunData(samples, metas, split, golden, gpath, golden_hash(golden), image_root, name)


def check_eval_images(image_root: Path, metas: list[SampleMeta], split: Split) -> None:
    bad = check_images(image_root, [metas[i].image_relpath for i in split.eval])
    if bad:
        shown = "\n  ".join(bad[:20]) + (f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else "")
        raise DataError(f"{len(bad)} eval image(s) cannot be used; the eval set must not change silently, so fix "
                        f"or remove them from the data (then delete {split.path} to rebuild the split):\n  {shown}")
