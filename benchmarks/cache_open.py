"""What opening a built feature cache costs in image hashing: every start hashed the content of every image
in the split (the cache is keyed by content), where a memo of each file's size, mtime, inode and hash
now needs one stat per image. N random files of a web image's size stand in for the images; the page
cache is warm for every row (a cold disk only makes "every image read" slower).

    python benchmarks/cache_open.py [--images 32000] [--kib 60] [--root /tmp/cache_open]
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from vlmtrack.model import feature_cache as fc


def write_files(root: Path, n: int, kib: int) -> list[str]:
    rels = [f"{i // 1000:05d}/{i}.jpg" for i in range(n)]
    for rel in rels:
        path = root / rel
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(os.urandom(kib * 1024))
    return rels


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=32_000)
    p.add_argument("--kib", type=int, default=60, help="size of each file (LLaVA-Pretrain's JPEGs: tens of KiB)")
    p.add_argument("--root", type=Path, help="where to write the files (kept and reused); default a temp folder")
    a = p.parse_args()
    root = a.root or Path(tempfile.mkdtemp(prefix="vlmtrack_cache_open_"))
    folder = root / "cache"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    try:
        t0 = time.perf_counter()
        rels = write_files(root / "images", a.images, a.kib)
        print(f"[cache_open] {a.images} files of {a.kib} KiB in {time.perf_counter() - t0:.1f} s; {os.cpu_count()} cores")
        rows = []
        t0 = time.perf_counter()
        before = {rel: fc.image_hash(root / "images", rel) for rel in rels}
        rows.append(("every image read and hashed, one thread (before)", time.perf_counter() - t0))
        t0 = time.perf_counter()
        first = fc.image_hashes(folder, root / "images", rels)
        rows.append((f"first open: hashed on {fc.HASH_THREADS} threads, memo written", time.perf_counter() - t0))
        t0 = time.perf_counter()
        again = fc.image_hashes(folder, root / "images", rels)
        rows.append(("a later open: one stat per image, memo read", time.perf_counter() - t0))
        assert before == first == again
        print(f"\n| image hashes of {a.images:,} images | s | s per 558K images |")
        print("|---|---|---|")
        for name, s in rows:
            print(f"| {name} | {s:.2f} | {s * 558_128 / a.images:.1f} |")
    finally:
        if not a.root:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
