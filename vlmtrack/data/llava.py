"""LLaVA-Pretrain reader: `[{id, image, conversations: [{from: human, value}, {from: gpt, value}]}]`.

Metadata is validated up front and every bad record is reported (id + reason) before anything
trains; images are only opened by the dataset.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from vlmtrack.data.prompt import IMAGE_TOKEN


class DataError(ValueError):
    pass


@dataclass(frozen=True)
class Sample:
    index: int  # position in the data file
    id: str
    image_relpath: str
    human: str
    caption: str


@dataclass(frozen=True)
class SampleMeta:
    index: int
    id: str
    image_relpath: str
    label_len: int
    bucket: str


def read_json_list(path: Path) -> list:
    if not path.is_file():
        raise DataError(f"data file '{path}' does not exist: set data.data_path to a LLaVA-Pretrain json")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"data file '{path}' is not valid JSON ({e.msg} at line {e.lineno}): is it truncated?") from None
    except UnicodeDecodeError as e:
        raise DataError(f"data file '{path}' is not UTF-8 text: {e}") from None
    if not isinstance(raw, list):
        raise DataError(f"data file '{path}' must hold a JSON list of records, found {type(raw).__name__}")
    return raw


def check_relpath(relpath: str) -> str | None:
    """Why an image path may not be used, or None: it must stay under the image root."""
    if not relpath or not relpath.strip():
        return "empty image path"
    # string tests, as PurePosixPath would judge them (absolute: a leading "/"; ".." as a part): building
    # a path object for each of 558K records was half the cost of validating them
    posix = relpath.replace("\\", "/")
    if posix.startswith("/") or relpath[1:3] == ":/" or relpath[1:3] == ":\\":
        return f"image path '{relpath}' is absolute; paths must be relative to data.image_folder"
    if ".." in posix.split("/"):
        return f"image path '{relpath}' escapes the image root with '..'"
    return None


def resolve_image(image_root: Path, relpath: str) -> Path:
    problem = check_relpath(relpath)
    if problem:
        raise DataError(problem)
    root = image_root.resolve()
    path = (root / relpath).resolve()
    if root not in path.parents:  # symlinks pointing outside the root
        raise DataError(f"image path '{relpath}' resolves outside the image root {root}")
    return path


def missing_images(image_root: Path, relpaths: list[str]) -> list[str]:
    """The relpaths with no file under image_root, without opening any image.

    One directory listing per folder instead of one stat per record: LLaVA-Pretrain's 558K images sit in
    ~660 folders, so this is ~660 system calls, not 558K. A name not in its folder's listing is checked
    once more with a stat, which settles case-insensitive file systems and unusual spellings ("a/./b").
    """
    listings: dict[str, set[str]] = {}
    missing = []
    for rel in dict.fromkeys(relpaths):
        folder, _, name = rel.rpartition("/")
        if folder not in listings:
            try:
                listings[folder] = set(os.listdir(image_root / folder))
            except OSError:  # no such folder (or not one): every file in it is missing
                listings[folder] = set()
        if name not in listings[folder] and not (image_root / rel).is_file():
            missing.append(rel)
    return missing


def _turn(conversations: list, speaker: str) -> str | None:
    for turn in conversations:
        if isinstance(turn, dict) and turn.get("from") == speaker:
            value = turn.get("value")
            return value if isinstance(value, str) else None
    return None


def parse_record(index: int, rec) -> Sample | str:
    """A Sample, or the reason the record is unusable."""
    if not isinstance(rec, dict):
        return f"record is a {type(rec).__name__}, not an object"
    missing = [k for k in ("id", "image", "conversations") if k not in rec]
    if missing:
        return f"missing {', '.join(missing)}"
    rid = rec["id"]
    if isinstance(rid, bool) or not isinstance(rid, (str, int)) or (isinstance(rid, str) and not rid.strip()):
        # a null id was trained as the id "None": an id names the record in every file and message after
        return f"'id' must be a non-empty string or an integer, got {json.dumps(rid)}"
    if not isinstance(rec["image"], str):
        return "'image' must be a string path"
    conv = rec["conversations"]
    if not isinstance(conv, list) or not conv:
        return "'conversations' must be a non-empty list"
    human = _turn(conv, "human")
    if human is None:
        return "no human turn"
    n_img = human.count(IMAGE_TOKEN)
    if n_img != 1:
        return f"human turn must contain exactly one {IMAGE_TOKEN} placeholder, found {n_img}"
    caption = _turn(conv, "gpt")
    if caption is None:
        return "no gpt turn"
    if not caption.strip():
        return "empty caption (gpt turn is blank)"
    problem = check_relpath(rec["image"])
    if problem:
        return problem
    return Sample(index, str(rec["id"]), rec["image"], human, caption)


def read_samples(data_path: Path) -> list[Sample]:
    """Every record validated; all bad records are reported together, naming id and reason."""
    return check_records(read_json_list(data_path), data_path)


def record_id(rec, index: int):
    """How an error message names a record: its id, or its position when it has none."""
    rid = rec.get("id") if isinstance(rec, dict) else None
    return rid if isinstance(rid, (str, int)) and not isinstance(rid, bool) and str(rid).strip() else f"<record {index}>"


def sort_records(raw: list) -> tuple[list[Sample], list[dict]]:
    """The Samples of a data file's parsed records, and every bad one as {id, index, image, reason}."""
    samples, bad, seen = [], [], {}
    for i, rec in enumerate(raw):
        parsed = parse_record(i, rec)
        if isinstance(parsed, Sample) and parsed.id in seen:
            parsed = f"duplicate id (also record {seen[parsed.id]})"
        if isinstance(parsed, str):
            image = rec.get("image") if isinstance(rec, dict) else None
            bad.append({"id": str(record_id(rec, i)), "index": i, "image": image if isinstance(image, str) else None,
                        "reason": parsed})
            continue
        seen[parsed.id] = i
        samples.append(parsed)
    return samples, bad


def listed(lines: list[str], limit: int) -> str:
    """Up to `limit` lines of a list an error message names, then how many more there are."""
    return "\n  ".join(lines[:limit]) + (f"\n  ... and {len(lines) - limit} more" if len(lines) > limit else "")


def bad_records_text(data_path: Path, bad: list[dict], total: int, fix: str = "fix or remove them") -> str:
    return f"{data_path}: {len(bad)} bad record(s) of {total}; {fix}:\n  " + listed(
        [f"id={b['id']}: {b['reason']}" for b in bad], 50)


def check_records(raw: list, data_path: Path) -> list[Sample]:
    """The Samples of a data file's parsed records, or a DataError listing every bad one (id and reason)."""
    samples, bad = sort_records(raw)
    if bad:
        raise DataError(bad_records_text(data_path, bad, len(raw)))
    if not samples:
        raise DataError(f"{data_path}: no records")
    return samples


def bucket_of(label_len: int, edges: list[int], names: list[str]) -> str:
    """Bucket i holds edges[i] < label_len <= edges[i+1]; the first also holds 0, the last everything above."""
    for name, upper in zip(names, edges[1:]):
        if label_len <= upper:
            return name
    return names[-1]


def get_metadata(samples: list[Sample], tokenizer, edges: list[int], names: list[str]) -> list[SampleMeta]:
    """id, image_relpath, label_len, bucket for every sample, without decoding an image."""
    ids = tokenizer([s.caption for s in samples], add_special_tokens=False)["input_ids"]
    return metadata(samples, [len(t) for t in ids], edges, names)


def metadata(samples: list[Sample], label_lens: list[int], edges: list[int], names: list[str]) -> list[SampleMeta]:
    """get_metadata from caption lengths already counted (data/label_lengths.py counts and keeps them)."""
    bucket = {n: bucket_of(n, edges, names) for n in set(label_lens)}  # a few hundred lengths, 558K samples
    return [SampleMeta(s.index, s.id, s.image_relpath, n, bucket[n]) for s, n in zip(samples, label_lens)]
