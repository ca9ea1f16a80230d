"""The vision-feature cache: the tower is frozen, so each image's features are computed once per
(model, processor settings) and read from disk afterwards, across epochs, runs and sweep trials.

Features are stored before `vision_ln` (which belongs to the connector), so one cache serves both
settings of the sweep, and the ablations see exactly what the live tower would give. Stored in bf16 as
shards of raw rows ([n, tokens, dim]) with a JSON index of image content hashes, each shard written
to a temporary name and renamed: a build that dies leaves no half-written shard, keeps the shards it
committed (one every SHARD_ROWS rows), and its temporary file is removed by the next build on its host.

Each image's content hash is kept in a memo beside the shards with the file's size, mtime and inode, so a
start stats the images instead of reading them all again.

A build can run on a thread (`BackgroundBuild`) while the run's first steps train on the live tower; a
build stopped early keeps the rows it computed as a shard, and the next build computes only the rest.
"""
from __future__ import annotations

import hashlib
import json
import contextlib
import os
import re
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from vlmtrack.config import ConfigError
from vlmtrack.data.dataset import pixel_values
from vlmtrack.data.llava import DataError, resolve_image

CACHE_VERSION = 1
HASH_MEMO = "image-hashes"  # per image root: relpath -> [size, mtime_ns, inode, content hash]
HASH_THREADS = min(16, os.cpu_count() or 1)
# what a build leaves free on its disk: a cache that filled it would fail the run's checkpoint saves after it
KEEP_FREE_GIB = 5.0
# the estimate counts image paths, the cache image contents (equal files share one row): a cache this close
# to the estimate counts as built, so a full disk does not turn a built cache away
ESTIMATE_SLACK = 0.05


def cache_root(setting: str) -> Path:
    return Path(setting) if setting else Path(os.environ.get("VLMTRACK_CACHE", "~/.cache/vlmtrack")).expanduser() / "features"


def tower_fingerprint(vision_path: str, tower, image_processor) -> str:
    """What the features depend on: the weights (a hub commit, or the local files' names, sizes and
    times), the tower's config and the processor's settings."""
    local = Path(vision_path).expanduser()
    if local.is_dir():
        weights = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in local.glob("*.safetensors"))
        weights += sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in local.glob("*.bin"))
        source = {"path": str(local.resolve()), "weights": weights}
    else:
        source = {"hub_id": vision_path, "revision": getattr(tower.config, "_commit_hash", None)}
    processor = {k: v for k, v in image_processor.to_dict().items() if not k.startswith("_")}
    blob = json.dumps({"v": CACHE_VERSION, "source": source, "tower": tower.config.to_dict(),
                       "processor": processor}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def image_hash(image_root: Path, relpath: str) -> str | None:
    try:
        return hashlib.blake2b(resolve_image(image_root, relpath).read_bytes(), digest_size=16).hexdigest()
    except OSError:
        return None  # missing: the dataset reports it as it would without a cache


def image_hashes(folder: Path, image_root: Path, relpaths: list[str]) -> dict[str, str | None]:
    """Each image's content hash. A file whose size, mtime and inode are those the folder's memo recorded
    when it was last hashed is not read again: every start read and hashed every image of the split
    (benchmarks/cache_open.py: ~80 s for 558K on a 2-core host), where a stat each now does. The rest are
    hashed on threads (reads and blake2b release the GIL) and added to the memo. Its own temporary name per
    writer: sweep workers sharing the cache write it at once (files.write_atomic's one .tmp name would clash)."""
    memo_path = folder / f"{HASH_MEMO}-{hashlib.blake2b(str(image_root.resolve()).encode(), digest_size=8).hexdigest()}.json"
    memo = _read_memo(memo_path)
    hashes: dict[str, str | None] = {}
    todo: list[tuple[str, list[int]]] = []
    for rel in dict.fromkeys(relpaths):
        try:
            st = os.stat(image_root / rel)
        except OSError:
            hashes[rel] = None  # missing: as image_hash says
            continue
        key = [st.st_size, st.st_mtime_ns, st.st_ino]
        known = memo.get(rel)
        if known is not None and known[:3] == key:
            hashes[rel] = known[3]
        else:
            todo.append((rel, key))
    if todo:
        # a few hundred files per task: one future per file spent more on thread hand-offs than on hashing
        chunks = [todo[i:i + 256] for i in range(0, len(todo), 256)]
        with ThreadPoolExecutor(HASH_THREADS) as pool:
            done = pool.map(lambda chunk: [image_hash(image_root, rel) for rel, _ in chunk], chunks)
            for (rel, key), h in zip(todo, (h for part in done for h in part)):
                hashes[rel] = h
                if h is not None:
                    memo[rel] = [*key, h]
        _write_memo(memo_path, memo)
    return hashes


def _read_memo(path: Path) -> dict[str, list]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # none yet, or cut short: hashed again, nothing else lost
        return {}


def _write_memo(path: Path, memo: dict[str, list]) -> None:
    tmp = path.with_name(f".hashes-{time.time_ns()}-{_writer_tag()}.json.tmp")  # a dead writer's is removed
    tmp.write_text(json.dumps(memo, separators=(",", ":")))
    tmp.replace(path)  # whole or not at all; two writers: the last one's, each entry valid


@dataclass
class FeatureStore:
    """Read side, safe to hand to DataLoader workers: shards are memory-mapped lazily in each process."""
    folder: Path
    row_of: dict[str, tuple[int, int]]  # image relpath -> (shard, row)
    shards: list[tuple[str, tuple[int, int, int]]]  # (file name, shape)
    _maps: dict = field(default_factory=dict, repr=False)
    _pid: int = -1

    def get(self, relpath: str) -> torch.Tensor | None:
        where = self.row_of.get(relpath)
        if where is None:
            return None
        if self._pid != os.getpid():
            self._maps, self._pid = {}, os.getpid()
        shard, row = where
        if shard not in self._maps:
            name, shape = self.shards[shard]
            # copy-on-write: the rows are read in place (collate's stack is their one copy), and the file
            # stays as it is whatever a caller does with them
            self._maps[shard] = np.memmap(self.folder / name, dtype=np.uint16, mode="c", shape=shape)
        return torch.from_numpy(self._maps[shard][row]).view(torch.bfloat16)

    def __getstate__(self):
        return {"folder": self.folder, "row_of": self.row_of, "shards": self.shards, "_maps": {}, "_pid": -1}


def _index(folder: Path) -> tuple[dict[str, tuple[int, int]], list[tuple[str, tuple[int, int, int]]]]:
    by_hash, shards = {}, []
    for meta in sorted(folder.glob("shard-*.json")):
        info = json.loads(meta.read_text())
        if not (folder / info["file"]).exists():
            continue
        shards.append((info["file"], tuple(info["shape"])))
        for row, h in enumerate(info["hashes"]):
            by_hash.setdefault(h, (len(shards) - 1, row))
    return by_hash, shards


def estimate_gib(num_images: int, tokens: int, dim: int) -> float:
    return num_images * tokens * dim * 2 / 2**30


def feature_shape(tower) -> tuple[int, int]:
    """(tokens, dim) of the tower's last hidden state, for the size estimate: CLIP adds a class token."""
    c = tower.config
    patches = (c.image_size // c.patch_size) ** 2
    return patches + (1 if "clip" in c.model_type else 0), c.hidden_size


def cache_folder(cfg, backbone, data, log=print) -> Path | None:
    """Where the run's features are cached, or None when the cache is off (`data.feature_cache`: on, off,
    or auto = on when the estimated size of the split's images fits `data.feature_cache_max_gib`)."""
    d = cfg.data
    if d.feature_cache == "off":
        return None
    unique = len(set(split_images(data)))
    size = estimate_gib(unique, *feature_shape(backbone.tower))
    if d.feature_cache == "auto" and size > d.feature_cache_max_gib:
        log(f"[cache] vision features of {unique} images would take ~{size:.1f} GiB, over "
            f"data.feature_cache_max_gib={d.feature_cache_max_gib:g}: computed live (data.feature_cache=on forces it)")
        return None
    folder = cache_root(d.feature_cache_dir) / tower_fingerprint(cfg.model.vision, backbone.tower,
                                                                 backbone.image_processor)
    missing, free = gib_to_write(folder, size), free_gib(folder)
    if missing > ESTIMATE_SLACK * size and missing > free - KEEP_FREE_GIB:
        why = (f"vision features of {unique} images need ~{missing:.2f} GiB more in {folder}, and its disk has "
               f"{free:.1f} GiB free (a build leaves {KEEP_FREE_GIB:g} GiB there for checkpoints and logs)")
        if d.feature_cache == "auto":
            log(f"[cache] {why}: computed live (free space, or set data.feature_cache_dir to a larger disk)")
            return None
        raise ConfigError(f"data.feature_cache=on: {why}. Free space there, set data.feature_cache_dir to a disk "
                          "with room, or set data.feature_cache=auto (computed live when it does not fit)")
    log(f"[cache] vision features of {unique} images: ~{size:.2f} GiB (bf16) in {folder}")
    return folder


def gib_to_write(folder: Path, size_gib: float) -> float:
    """The estimate less the shards already committed there (a cache built before, or part built)."""
    done = sum(p.stat().st_size for p in folder.glob("shard-*.bin")) if folder.is_dir() else 0
    return max(0.0, size_gib - done / 2**30)


def free_gib(folder: Path) -> float:
    """Free space on the disk that holds (or will hold) `folder`."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    return shutil.disk_usage(existing).free / 2**30


def split_images(data) -> list[str]:
    return [data.metas[i].image_relpath for i in (*data.split.train, *data.split.eval)]


def run_cache_build(cfg, backbone, data, device: torch.device, num_workers: int,
                    log=print) -> Callable[..., FeatureStore | None] | None:
    """The run's cache build, `build(stop=None)` -> its store (an open_or_build of the split's images), to
    call now or hand to a BackgroundBuild; None when the cache is off."""
    folder = cache_folder(cfg, backbone, data, log)
    if folder is None:
        return None

    def build(stop: threading.Event | None = None) -> FeatureStore | None:
        return open_or_build(folder, data.image_root, split_images(data), backbone, device, cfg.eval.batch_size,
                             num_workers, log, stop)

    return build


class BackgroundBuild:
    """`build(stop)` (an open_or_build) on a thread. `store` is set once it is complete (None if it was
    stopped first), `error` if it raised; `stop()` ends it at its next batch and waits for it."""

    def __init__(self, build: Callable[[threading.Event], FeatureStore | None]):
        self.store: FeatureStore | None = None
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(build,), name="vlmtrack-feature-cache", daemon=True)
        self._thread.start()

    def _run(self, build) -> None:
        try:
            self.store = build(self._stop)
        except Exception as e:  # the run trains on with the live tower; its log says why
            self.error = f"{type(e).__name__}: {e}"

    def done(self) -> bool:
        return not self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def open_or_build(folder: Path, image_root: Path, relpaths: list[str], backbone, device: torch.device,
                  batch_size: int = 64, num_workers: int = 0, log=print,
                  stop: threading.Event | None = None) -> FeatureStore | None:
    """The store for `relpaths`, computing (and appending as one new shard) the images not cached yet.
    Images that cannot be read are left out: the dataset then handles them by `data.on_bad_image`. A build
    that `stop` ends early keeps what it computed and returns None (the store would be incomplete)."""
    folder.mkdir(parents=True, exist_ok=True)
    remove_dead_writers_files(folder, log)
    t0 = time.perf_counter()
    hashes = image_hashes(folder, image_root, relpaths)
    by_hash, shards = _index(folder)
    missing = list(dict.fromkeys(h for h in hashes.values() if h and h not in by_hash))
    if missing:
        first: dict[str, str] = {}  # each missing content is computed once, from its first file
        for rel, h in hashes.items():
            first.setdefault(h, rel)
        log(f"[cache] computing vision features of {len(missing)} image(s) into {folder}")
        done, stopped = _build_shard(folder, [first[h] for h in missing], missing, image_root, backbone, device,
                                     batch_size, num_workers, stop)
        if stopped:
            log(f"[cache] build stopped with {done} of {len(missing)} image(s) computed, kept for the next run "
                f"({time.perf_counter() - t0:.1f}s)")
            return None
        by_hash, shards = _index(folder)
        log(f"[cache] {done} image(s) cached in {time.perf_counter() - t0:.1f}s")
    row_of = {rel: by_hash[h] for rel, h in hashes.items() if h in by_hash}
    return FeatureStore(folder, row_of, shards)


class _Images(torch.utils.data.Dataset):
    def __init__(self, relpaths, image_root, image_processor, dtype):
        self.relpaths, self.image_root, self.image_processor, self.dtype = relpaths, image_root, image_processor, dtype

    def __len__(self):
        return len(self.relpaths)

    def __getitem__(self, i):
        try:
            return i, pixel_values(self.image_processor, self.image_root, self.relpaths[i], self.dtype)
        except DataError:
            return i, None


def _collate(items):
    ok = [(i, px) for i, px in items if px is not None]
    return [i for i, _ in ok], (torch.stack([px for _, px in ok]) if ok else None)


SHARD_ROWS = 8192  # a build commits a shard every this many rows (SigLIP-base: 2.3 GiB): a death loses one at most


def _writer_tag() -> str:
    """This process's mark in a temporary shard's name: its host, its PID namespace and its pid (a shared
    cache folder has writers on several hosts, and containers on one host name, host networking, each
    number their own pids), so that a later build can tell a dead writer's leftovers from a live one's."""
    host = re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())  # no "." or "-": the name is parsed back
    return f"{host}ns{_pid_namespace()}-{os.getpid()}"


def _pid_namespace() -> str:
    """The inode of this process's PID namespace on Linux (`pid:[4026531836]`), else empty."""
    try:
        return re.sub(r"\D", "", os.readlink("/proc/self/ns/pid"))
    except OSError:
        return ""


def remove_dead_writers_files(folder: Path, log=print) -> None:
    """Deletes the temporary files (shards, hash memos) of builds on this host and PID namespace whose process
    is gone (killed mid-write): a shard's would otherwise keep up to its gigabytes on the disk for ever."""
    host = _writer_tag().rsplit("-", 1)[0]
    for tmp in folder.glob(".*.tmp"):
        writer = tmp.name.split(".")[1].split("-")  # shard (or hashes), time, host, pid
        if len(writer) != 4 or writer[2] != host or not writer[3].isdigit() or _alive(int(writer[3])):
            continue
        size = tmp.stat().st_size if tmp.exists() else 0
        tmp.unlink(missing_ok=True)
        log(f"[cache] removed {tmp.name} ({size / 2**30:.2f} GiB), left by a build whose process (pid "
            f"{writer[3]}) died")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class _ShardWriter:
    """Rows appended to a temporary file and committed as a shard (the file renamed, then its index written)
    every SHARD_ROWS rows and at the end; `discard()` drops only the shard being written."""

    def __init__(self, folder: Path, hashes: list[str]):
        self.folder, self.hashes, self.written = folder, hashes, 0
        self._start()

    def _start(self) -> None:
        self.name = f"shard-{time.time_ns()}-{_writer_tag()}"
        self.tmp = self.folder / f".{self.name}.bin.tmp"
        self.file = open(self.tmp, "wb")
        self.rows: list[int] = []
        self.shape = None

    def add(self, index: list[int], features: torch.Tensor) -> None:
        self.file.write(features.contiguous().view(torch.uint16).numpy().tobytes())
        self.rows += index
        self.shape = list(features.shape[1:])
        if len(self.rows) >= SHARD_ROWS:
            self.commit()
            self._start()

    def commit(self) -> None:
        self.file.close()
        if not self.rows:
            self.tmp.unlink(missing_ok=True)
            return
        self.tmp.replace(self.folder / f"{self.name}.bin")
        meta = {"file": f"{self.name}.bin", "shape": [len(self.rows), *self.shape],
                "hashes": [self.hashes[i] for i in self.rows]}
        tmp_meta = self.folder / f".{self.name}.json.tmp"
        tmp_meta.write_text(json.dumps(meta))
        tmp_meta.replace(self.folder / f"{self.name}.json")
        self.written += len(self.rows)

    def discard(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


@torch.no_grad()
def _build_shard(folder: Path, relpaths: list[str], hashes: list[str], image_root: Path, backbone,
                 device: torch.device, batch_size: int, num_workers: int,
                 stop: threading.Event | None = None) -> tuple[int, bool]:
    """(rows written, whether `stop` ended the build early), in shards of SHARD_ROWS. On CUDA the tower
    runs on its own stream, so that a build on a thread overlaps the training steps instead of queueing
    behind them."""
    dtype = backbone.tower_dtype
    loader = torch.utils.data.DataLoader(_Images(relpaths, image_root, backbone.image_processor, dtype),
                                         batch_size=batch_size, num_workers=num_workers, collate_fn=_collate,
                                         pin_memory=device.type == "cuda")
    stopped = False
    stream = torch.cuda.Stream(device) if device.type == "cuda" else None
    writer = _ShardWriter(folder, hashes)
    try:
        with torch.cuda.stream(stream) if stream else contextlib.nullcontext():
            for index, pixels in loader:
                if stop is not None and stop.is_set():
                    stopped = True
                    break
                if pixels is not None:
                    writer.add(index, backbone.vision_features(pixels.to(device, dtype)).to(torch.bfloat16).cpu())
        writer.commit()
    except BaseException:
        writer.discard()  # the shards committed before stay
        raise
    return writer.written, stopped
