"""The golden set (spec 3.1): a fixed sample of the eval split, saved once and reused forever."""
from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

from vlmtrack.data.llava import DataError, Sample, SampleMeta
from vlmtrack.data.split import Split, allocate
from vlmtrack.files import write_jsonl


def default_golden_path(dataset_name: str, size: int) -> Path:
    return Path("data/golden") / f"{dataset_name}_golden{size}.jsonl"


# The names a run gives its golden captions: here alone, since the loop and `vlmtrack golden` write them
# and the sweep summary and `vlmtrack report` find them again.
#
# MLflow lists a run's tables in one tag that it cuts at 8,000 characters: one table per save broke every
# table view of a run past ~129 saves. So a run keeps two kinds, both with a `step` column: the latest
# save's captions under one fixed name (what MLflow's experiment view lines up across runs and sweep
# trials), and its history in tables of GOLDEN_HISTORY_SAVES saves each (~23 for the spec's 556 saves). A
# save re-uploads at most one history table, so its cost does not grow with the run's length.
QUAL_DIR = "qual"  # a run's output folder and artifact folder for the per-step caption files
GOLDEN_TABLE_DIR = "golden"  # the run's artifact folder for the golden caption tables (and their images)
GOLDEN_HISTORY_DIR = f"{GOLDEN_TABLE_DIR}/history"
GOLDEN_HISTORY_SAVES = 25
_LATEST_TABLE = re.compile(rf"{GOLDEN_TABLE_DIR}/golden\d+\.json$")
_LEGACY_TABLE = re.compile(rf"{GOLDEN_TABLE_DIR}/step_(\d+)_golden\d+\.json$")  # one table a save (before 0.9)
_QUAL_FILE = re.compile(r"step_(\d+)_golden\d+\.jsonl$")


def latest_golden_table(size: int) -> str:
    """The MLflow table (artifact path) of the latest save's golden captions."""
    return f"{GOLDEN_TABLE_DIR}/golden{size}.json"


def history_golden_table(first_step: int, size: int) -> str:
    """The MLflow table of up to GOLDEN_HISTORY_SAVES saves' golden captions, from the save at `first_step`."""
    return f"{GOLDEN_HISTORY_DIR}/golden{size}_from_step_{first_step}.json"


def is_latest_golden_table(path: str) -> bool:
    return _LATEST_TABLE.search(path) is not None


def legacy_golden_table_step(path: str) -> int | None:
    """The step of a table named one per save (runs logged before the history tables); None otherwise."""
    m = _LEGACY_TABLE.search(path)
    return int(m.group(1)) if m else None


def qual_file(out_dir: Path, step: int, size: int) -> Path:
    """The jsonl of the golden captions generated at `step`, in a run's output folder."""
    return Path(out_dir) / QUAL_DIR / f"step_{step}_golden{size}.jsonl"


def _qual_step(path: Path) -> int | None:
    m = _QUAL_FILE.fullmatch(path.name)
    return int(m.group(1)) if m else None


def qual_files(out_dir: Path) -> list[Path]:
    """A run's qual_file jsonls, the earliest step first."""
    files = [p for p in (Path(out_dir) / QUAL_DIR).glob("step_*_golden*.jsonl") if _qual_step(p) is not None]
    return sorted(files, key=_qual_step)


def build_golden(split: Split, metas: list[SampleMeta], samples: list[Sample], names: list[str],
                 counts: list[int], seed: int) -> list[dict]:
    rng = random.Random(seed)
    by_bucket = {b: sorted((i for i in split.eval if metas[i].bucket == b), key=lambda i: metas[i].id) for b in names}
    take = allocate(counts, [len(by_bucket[b]) for b in names])
    items = []
    for b, n in zip(names, take):
        for i in rng.sample(by_bucket[b], n):
            items.append({
                "id": metas[i].id,
                "image_relpath": metas[i].image_relpath,
                "gt_text": samples[i].caption,
                "bucket": b,
                "label_len": metas[i].label_len,
                "split_hash": split.eval_hash,
            })
    return items


def golden_hash(items: list[dict]) -> str:
    return hashlib.sha256(json.dumps([it["id"] for it in items]).encode()).hexdigest()[:16]


def load_or_create_golden(path: Path, split: Split, metas: list[SampleMeta], samples: list[Sample],
                          names: list[str], counts: list[int], seed: int) -> list[dict]:
    """Creates the file on first use; afterwards checks it still belongs to this eval split and
    fails with a clear message, never regenerating it silently."""
    if path.exists():
        items = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        eval_ids = {metas[i].id for i in split.eval}
        strangers = [it.get("id") for it in items if it.get("id") not in eval_ids]
        if strangers:
            raise DataError(
                f"golden set {path} holds {len(strangers)} item(s) not in this run's eval split "
                f"(e.g. id={strangers[0]}; it was drawn from split {items[0].get('split_hash')}, this run's is "
                f"{split.eval_hash}): point data.golden_set_path elsewhere, or delete the file to draw a new set"
            )
        if len(items) != sum(counts):
            raise DataError(f"golden set {path} has {len(items)} items, data.golden_counts asks for {sum(counts)}")
        return items
    items = build_golden(split, metas, samples, names, counts, seed)
    write_jsonl(path, items)
    return items
