"""The image-existence check before a run (issue 26, item 3), alone, at LLaVA-Pretrain's size: N record paths
over M image files (records share images), as vlmtrack checks them (data/llava.py::missing_images: one listing
per folder, each distinct path looked up once), beside one stat per distinct path, serial and on threads.

The files are empty (existence is all the check asks), so the set builds in seconds where the start-up
benchmark renders JPEGs; two of the paths are missing, one in a folder that does not exist.

    python benchmarks/image_existence.py                      # 558,128 records over 32,000 images
    python benchmarks/image_existence.py --records 1000 --images 100 --root /tmp/x
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's vlmtrack, not an installed one

from vlmtrack.data.llava import missing_images  # noqa: E402

PER_FOLDER = 850  # LLaVA-Pretrain: 558K images in ~660 folders


def build(root: Path, images: int) -> list[str]:
    """`images` empty files under root, PER_FOLDER a folder; their relative paths."""
    rels = [f"{i // PER_FOLDER:05d}/{i:09d}.jpg" for i in range(images)]
    for folder in dict.fromkeys(rel.split("/")[0] for rel in rels):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for rel in rels:
        (root / rel).touch()
    return rels


def best_of(repeats: int, fn) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def measure(root: Path, records: int, images: int, repeats: int = 3) -> dict[str, tuple[float, int]]:
    """Seconds (best of `repeats`) and paths found missing, per method."""
    rels = build(root, images)
    paths = [rels[i % images] for i in range(records)]
    paths[records // 3], paths[2 * records // 3] = "00000/gone.jpg", "99999/no-folder.jpg"
    distinct = list(dict.fromkeys(paths))

    def stat_each():
        return [rel for rel in distinct if not os.path.isfile(root / rel)]

    def stat_threads():
        with ThreadPoolExecutor(16) as pool:
            found = list(pool.map(lambda rel: os.path.isfile(root / rel), distinct, chunksize=256))
        return [rel for rel, ok in zip(distinct, found) if not ok]

    results = {}
    for name, fn in [("listing per folder (vlmtrack)", lambda: missing_images(root, paths)),
                     ("one stat per distinct path", stat_each), ("one stat per distinct path, 16 threads", stat_threads)]:
        seconds, missing = best_of(repeats, fn)
        results[name] = (seconds, len(missing))
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=558_128)
    p.add_argument("--images", type=int, default=32_000)
    p.add_argument("--root", type=Path, help="where to build the files (kept); default a temp folder, removed")
    a = p.parse_args()
    root = a.root or Path(tempfile.mkdtemp(prefix="vlmtrack_exist_"))
    try:
        results = measure(root, a.records, a.images)
    finally:
        if not a.root:
            shutil.rmtree(root, ignore_errors=True)
    print(f"{a.records:,} records over {a.images:,} images ({PER_FOLDER} a folder), {os.cpu_count()} cores")
    for name, (seconds, missing) in results.items():
        print(f"{name:40s} {seconds:8.3f} s  ({missing} missing)")


if __name__ == "__main__":
    main()
