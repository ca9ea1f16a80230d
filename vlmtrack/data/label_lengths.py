"""Caption token lengths (spec 1.1) of a whole data file: counted in one batch, kept on disk for the next start.

At LLaVA-Pretrain's 558K captions, counting is the largest part of a run's start-up; the lengths only change
with the data file or the tokenizer, so a run keeps them in its split folder, keyed by both, and a second
start on the same data reads them back instead of tokenising again.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from vlmtrack.data.llava import Sample
from vlmtrack.files import write_atomic

CACHE_VERSION = 1


def count_tokens(tokenizer, texts: list[str]) -> list[int]:
    """len(tokenizer(text, add_special_tokens=False).input_ids) of every text, as prompt.label_len counts.

    A fast tokenizer's own batch encoder runs on all cores in Rust and hands back light Encoding objects;
    the tokenizer's __call__ converts each of them to Python lists first, which at 558K captions costs more
    than the encoding itself. Other tokenizers take the ordinary batched call."""
    backend = plain_backend(tokenizer)
    if backend is None:
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    # encode_batch_fast leaves out the character offsets, which a length does not need
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    return [len(e) for e in encode(texts, add_special_tokens=False)]


def plain_backend(tokenizer):
    """The fast tokenizer's Rust tokenizer when calling it directly encodes as the tokenizer's __call__ does
    (which first switches truncation and padding off and sets special-token splitting); None otherwise."""
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is None or backend.truncation is not None or backend.padding is not None:
        return None
    if backend.encode_special_tokens != bool(getattr(tokenizer, "split_special_tokens", False)):
        return None
    return backend


def tokenizer_fingerprint(tokenizer) -> str | None:
    """A hash of the fast tokenizer's whole definition (vocabulary, merges, added tokens, normalisation);
    None for a tokenizer without one, whose lengths are then never cached."""
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is None:
        return None
    blob = f"{type(tokenizer).__name__}|{getattr(tokenizer, 'split_special_tokens', False)}|{backend.to_str()}"
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def data_file_key(data_path: Path) -> dict:
    """Names a data file's version without reading it: its absolute path, size and modification time."""
    st = data_path.stat()
    return {"path": str(data_path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def cache_key(data_path: Path, tokenizer) -> dict | None:
    fingerprint = tokenizer_fingerprint(tokenizer)
    if fingerprint is None:
        return None
    return {"version": CACHE_VERSION, "data": data_file_key(data_path), "tokenizer": fingerprint}


def lengths_path(folder: Path) -> Path:
    return folder / "label_lengths.json"


def read_cached(path: Path, key: dict, count: int) -> list[int] | None:
    """The stored lengths when the file was written for this key and this many samples; None otherwise."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):  # absent, or unreadable: counted again and rewritten
        return None
    if not isinstance(doc, dict) or doc.get("key") != key:
        return None
    lengths = doc.get("lengths")
    return lengths if isinstance(lengths, list) and len(lengths) == count else None


def caption_lengths(samples: list[Sample], tokenizer, data_path: Path, folder: Path) -> list[int]:
    """Every sample's caption length, read from `folder` when it holds them for this data file and tokenizer,
    otherwise counted and stored there (compact JSON: one list of ints)."""
    key = cache_key(data_path, tokenizer)
    path = lengths_path(folder)
    cached = read_cached(path, key, len(samples)) if key else None
    if cached is not None:
        return cached
    lengths = count_tokens(tokenizer, [s.caption for s in samples])
    if key:
        write_atomic(path, json.dumps({"key": key, "lengths": lengths}, separators=(",", ":")))
    return lengths
