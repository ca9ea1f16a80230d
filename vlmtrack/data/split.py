"""Stratified eval split by caption token length (spec 1.2-1.5), persisted and hashed.

The eval set is drawn from the whole dataset first, independent of max_samples; max_samples then
bounds train + eval, train being a prefix of the remaining records in a seeded order. So runs with
different max_samples (p11: 18,000; sweep: 5,000) share one eval set and one golden set, and a
smaller run's train set is a prefix of a larger one's.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

from vlmtrack.data.llava import DataError, SampleMeta
from vlmtrack.files import write_json


@dataclass
class Split:
    train: list[int]  # sample positions (into the reader's sample list), in training order
    eval: list[int]  # grouped by bucket, in draw order
    bucket_counts: dict[str, int]
    eval_hash: str  # identifies the eval set: equal hashes mean comparable eval losses
    train_hash: str
    path: Path | None = None


def balanced_targets(total: int, k: int) -> list[int]:
    """Equal shares, the remainder to the last bucket: 2,000 over 3 -> 666/666/668 (spec 33/33/34)."""
    base = [total // k] * k
    base[-1] += total - sum(base)
    return base


def allocate(targets: list[int], available: list[int]) -> list[int]:
    """Per-bucket counts: a bucket short of its target passes the rest to the next bucket; the last
    bucket passes its shortfall back to the previous ones."""
    counts, carry = [], 0
    for want, have in zip(targets, available):
        take = min(want + carry, have)
        carry = want + carry - take
        counts.append(take)
    for i in range(len(counts) - 2, -1, -1):
        extra = min(carry, available[i] - counts[i])
        counts[i] += extra
        carry -= extra
    if carry:
        raise DataError(f"only {sum(available)} samples available, {sum(targets)} requested for eval")
    return counts


def content_hash(items: list) -> str:
    return hashlib.sha256(json.dumps(items, separators=(",", ":")).encode()).hexdigest()[:16]


def build_split(metas: list[SampleMeta], names: list[str], eval_size: int, max_samples: int, seed: int,
                mode: str = "stratified_len") -> Split:
    if eval_size >= len(metas):
        raise DataError(
            f"data.eval_size={eval_size} is not smaller than the dataset ({len(metas)} valid samples): "
            "lower data.eval_size"
        )
    rng = random.Random(seed)
    if mode == "stratified_len":
        by_bucket = {b: [i for i, m in enumerate(metas) if m.bucket == b] for b in names}
        for b in names:
            rng.shuffle(by_bucket[b])
        counts = allocate(balanced_targets(eval_size, len(names)), [len(by_bucket[b]) for b in names])
        eval_pos = [i for b, c in zip(names, counts) for i in by_bucket[b][:c]]
    else:
        eval_pos = rng.sample(range(len(metas)), eval_size)
    in_eval = set(eval_pos)
    order = list(range(len(metas)))
    random.Random(seed + 1).shuffle(order)
    rest = [i for i in order if i not in in_eval]
    if max_samples:
        rest = rest[: max_samples - eval_size]
    bucket_counts = {b: sum(metas[i].bucket == b for i in eval_pos) for b in names}
    return Split(
        train=rest,
        eval=eval_pos,
        bucket_counts=bucket_counts,
        eval_hash=content_hash([[metas[i].id, metas[i].bucket] for i in eval_pos]),
        train_hash=content_hash([metas[i].id for i in rest]),
    )


def split_path(out_dir: Path, seed: int, eval_size: int) -> Path:
    return out_dir / "splits" / f"split_seed{seed}_eval{eval_size}.json"


def save_split(split: Split, metas: list[SampleMeta], path: Path, params: dict) -> None:
    doc = {
        "params": params,
        "eval_hash": split.eval_hash,
        "train_hash": split.train_hash,
        "bucket_counts": split.bucket_counts,
        "num_train": len(split.train),
        "num_eval": len(split.eval),
        "eval": [
            {"id": metas[i].id, "bucket": metas[i].bucket, "label_len": metas[i].label_len,
             "image_path": metas[i].image_relpath}
            for i in split.eval
        ],
        "train_ids": [metas[i].id for i in split.train],
    }
    write_json(path, doc)


def split_mismatch(path: Path, built: dict, asked: dict) -> str:
    """One line: what differs from the run that wrote the split, and the override that gives this run its own
    folder (the README's demo, then a new data set in the same checkout, met two dumped dicts here)."""
    differ = [("the data file's contents, or the records data.on_bad_record=skip left out" if k == "data"
               else f"data.{k}: {built.get(k)} -> {asked[k]}")
              for k in asked if built.get(k) != asked[k]]
    return (f"{path} holds the split of another run ({'; '.join(differ)}): give this run its own folder with "
            f"train.run_name=<a new name> (or train.output_dir=...), or delete the file to rebuild the split here")


def load_split(path: Path, metas: list[SampleMeta], params: dict) -> Split:
    doc = json.loads(path.read_text())
    if doc.get("params") != params:
        raise DataError(split_mismatch(path, doc.get("params") or {}, params))
    pos = {m.id: i for i, m in enumerate(metas)}
    # one lookup per id (-1: not in the data), the ids named only when one is missing: at 558K ids a
    # separate membership pass cost as much as the lookups
    train, eval_pos = [pos.get(i, -1) for i in doc["train_ids"]], [pos.get(e["id"], -1) for e in doc["eval"]]
    if -1 in train or -1 in eval_pos:
        missing = [e["id"] for e in doc["eval"] if e["id"] not in pos] + [i for i in doc["train_ids"] if i not in pos]
        raise DataError(f"split file {path} names ids that are not in the data ({missing[:5]}...): delete it to rebuild")
    return Split(
        train=train,
        eval=eval_pos,
        bucket_counts=doc["bucket_counts"],
        eval_hash=doc["eval_hash"],
        train_hash=doc["train_hash"],
        path=path,
    )


def load_or_build_split(metas: list[SampleMeta], names: list[str], out_dir: Path, *, eval_size: int,
                        max_samples: int, seed: int, mode: str, edges: list[int], data_fingerprint: str) -> Split:
    """Builds the split once per output dir and reuses the persisted file afterwards."""
    params = {"seed": seed, "eval_size": eval_size, "max_samples": max_samples, "mode": mode,
              "len_buckets": edges, "bucket_names": names, "data": data_fingerprint}
    path = split_path(out_dir, seed, eval_size)
    if path.exists():
        return load_split(path, metas, params)
    split = build_split(metas, names, eval_size, max_samples, seed, mode)
    save_split(split, metas, path, params)
    split.path = path
    return split
