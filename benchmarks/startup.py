"""Start-up at LLaVA-Pretrain's size (issue 25, item 2): how long each phase before the first step takes.

Builds a LLaVA-format set of N records over M images (records share images: LLaVA's do not, but the
metadata path costs the same either way) and times the data phases through the real prepare_data, twice:
a first start (nothing persisted) and a second start on the same output folder (split, golden set and
label lengths found on disk). With CUDA it then times the real set_up_run on the bench's small preset
(model load, data, feature-cache estimate and build, speed-ups) and the first two steps (the first captures
the CUDA graphs), again as a first and a second start. Process imports are printed first: the CLI pays them.

    python benchmarks/startup.py                                  # 558,128 records over 3,000 images
    python benchmarks/startup.py --records 100000 --images 1000   # a 2-core machine: CPU phases only
    python benchmarks/startup.py --records 5000 --images 200 --preset tiny --model-phases on  # set_up_run on CPU
"""
from __future__ import annotations

import time

T_PROCESS = time.perf_counter()  # before the heavy imports: the CLI pays them too

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's vlmtrack, not an installed one

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
from collections import defaultdict  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from multiprocessing import Pool  # noqa: E402

import torch  # noqa: E402

from vlmtrack.bench.run import _write_chunk  # noqa: E402
from vlmtrack.config import load_config  # noqa: E402
from vlmtrack.data.pipeline import prepare_data  # noqa: E402
from vlmtrack.demo import synth  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "stage1_align_p11.yaml"


class Phases:
    """Seconds per named phase; `phase(name)` is the context manager prepare_data takes."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def phase(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - t0


def build_set(root: Path, records: int, images: int, workers: int) -> Path:
    """`root/data.json` and `root/images/...`, reused when a previous call built the same counts."""
    data, stamp = root / "data.json", root / "built.json"
    want = {"records": records, "images": images}
    if data.exists() and stamp.exists() and json.loads(stamp.read_text()) == want:
        return data
    t0 = time.perf_counter()
    pairs = synth.sample_records(records, seed=7)
    pictures = pairs[:images]
    with Pool(workers) as pool:  # rendering JPEGs is the slow part of the build: one chunk per core
        pool.map(_write_chunk, [(root, pictures[i::workers]) for i in range(workers)])
    rows = [record for record, _ in pairs]
    for i, record in enumerate(rows):
        record["image"] = pictures[i % images][0]["image"]
    data.write_text(json.dumps(rows))
    stamp.write_text(json.dumps(want))
    print(f"[build] {records:,} records over {images:,} images in {root} ({time.perf_counter() - t0:.1f}s)")
    return data


def run_config(data: Path, out: Path, overrides: list[str] = ()):
    """The user's command: the P11 config with data.max_samples=0 on this data."""
    return load_config(CONFIG, [
        f"data.data_path={data}", f"data.image_folder={data.parent / 'images'}", "data.max_samples=0",
        f"data.golden_set_path={out / 'golden.jsonl'}", f"train.output_dir={out}", *overrides,
    ])


def data_start(cfg, tokenizer) -> dict[str, float]:
    """One start's data phases, through prepare_data (the existence check of every record's image among them)."""
    timer = Phases()
    with timer.phase("prepare_data (total)"):
        data = prepare_data(cfg, tokenizer, cfg.output_dir, phase=timer.phase)
    # equal hashes before and after a change: the same split and golden set
    print(f"[data] {len(data.samples):,} samples, split {data.split.eval_hash}/{data.split.train_hash}, "
          f"golden {data.golden_hash}, label tokens {sum(m.label_len for m in data.metas):,}")
    return dict(timer.seconds)


def print_table(title: str, columns: dict[str, dict[str, float]]) -> None:
    names = list(dict.fromkeys(n for col in columns.values() for n in col))
    print(f"\n{title}")
    print(f"{'phase':34s}" + "".join(f"{c:>14s}" for c in columns))
    for n in names:
        print(f"{n:34s}" + "".join(f"{col[n]:14.2f}" if n in col else f"{'-':>14s}" for col in columns.values()))


def cpu_phases(data: Path, root: Path, tokenizer_path: str | None) -> None:
    from vlmtrack.model.backbone import load_tokenizer

    t0 = time.perf_counter()
    if tokenizer_path:
        tokenizer = load_tokenizer(tokenizer_path)
    else:
        from vlmtrack.data.prompt import add_image_token
        from vlmtrack.demo.tokenizer import build_tokenizer

        tokenizer = build_tokenizer(0)
        add_image_token(tokenizer)
    print(f"[tokenizer] {tokenizer_path or 'demo BPE'} ready in {time.perf_counter() - t0:.1f}s")
    out = root / "out_cpu"
    shutil.rmtree(out, ignore_errors=True)
    cfg = run_config(data, out)
    first = data_start(cfg, tokenizer)
    second = data_start(cfg, tokenizer)
    print_table("data phases (seconds)", {"first start": first, "second start": second})


@contextmanager
def timed_attr(module, name: str, timer: Phases, label: str):
    """Times every call of module.name under `label` (the real function runs)."""
    real = getattr(module, name)

    def wrapper(*args, **kwargs):
        with timer.phase(label):
            return real(*args, **kwargs)

    setattr(module, name, wrapper)
    try:
        yield
    finally:
        setattr(module, name, real)


def timed_start(cfg) -> dict[str, float]:
    """The real set_up_run, phase by phase, then its first two steps (the first captures the CUDA graphs).
    A feature cache built on a thread (data.feature_cache_build=during) is off that path: its build is
    printed apart, with the first step that reads it."""
    from contextlib import ExitStack

    from vlmtrack.tracking.base import NullTracker
    from vlmtrack.model import feature_cache
    from vlmtrack.train import setup
    from vlmtrack.train.step import Stepper
    from vlmtrack.train.trial import Trial

    timer = Phases()
    real_prepare = setup.prepare_data
    with ExitStack() as stack:
        for module, name, label in [(setup, "load_backbone", "model load"),
                                    (feature_cache, "cache_folder", "feature cache estimate"),
                                    (feature_cache, "open_or_build", "feature cache build"),
                                    (setup, "apply_speedups", "speed-ups (kernels, compile)")]:
            stack.enter_context(timed_attr(module, name, timer, label))
        setup.prepare_data = lambda *a, **k: real_prepare(*a, **k, phase=timer.phase)
        stack.callback(setattr, setup, "prepare_data", real_prepare)
        t0 = time.perf_counter()
        with timer.phase("set_up_run (total)"):
            run = setup.set_up_run([Trial(cfg, NullTracker())], log=print)
        steps = Stepper(run)
        for label, at in [("first step (graph capture)", 0), ("second step", 1)]:
            with timer.phase(label):
                steps.step(at)
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
        timer.seconds["to the first step's end"] = time.perf_counter() - t0 - timer.seconds["second step"]
        if run.cache_build is not None:  # built on a thread: when it was ready, and the first step that reads it
            while not run.cache_build.done():
                time.sleep(0.05)
            timer.seconds["cache ready, from set_up_run's start"] = time.perf_counter() - t0
            with timer.phase("first cached step (switch + capture)"):
                steps.step(2)
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
        setup.release(run)
    return dict(timer.seconds)


def model_phases(data: Path, root: Path, preset: str, cache_build: str = "auto") -> None:
    """Two starts of a run on the bench preset: with nothing on disk, then with the split, label lengths,
    golden set and feature cache the first one left."""
    import gc

    from vlmtrack.bench.run import build_preset

    paths = build_preset(preset, root / "preset") if not (root / "preset" / "llm").exists() else {
        "llm": root / "preset" / "llm", "vision": root / "preset" / "vision"}
    out = root / "out_model"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(root / "feature_cache", ignore_errors=True)
    cfg = run_config(data, out, [f"model.llm={paths['llm']}", f"model.vision={paths['vision']}",
                                 "data.feature_cache=on", f"data.feature_cache_dir={root / 'feature_cache'}",
                                 f"data.feature_cache_build={cache_build}",
                                 *([] if torch.cuda.is_available() else ["train.precision=fp32"])])  # CPU: no bf16 autocast
    columns = {}
    for start in ("first start", "second start"):
        columns[start] = timed_start(cfg)
        gc.collect()  # the first run's loaders and models go before the second loads its own
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    print_table("set_up_run and first steps (seconds)", columns)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=558_128)
    p.add_argument("--images", type=int, default=3_000)
    p.add_argument("--root", type=Path, help="where to build the set (kept and reused); default a temp folder")
    p.add_argument("--tokenizer", help="a tokenizer folder for the CPU phases (default the demo BPE)")
    p.add_argument("--preset", default="small", help="bench preset for the GPU phases")
    p.add_argument("--cache-build", choices=["auto", "before", "during"], default="auto",
                   help="data.feature_cache_build for the GPU phases (auto: during, on one CUDA device)")
    p.add_argument("--model-phases", choices=["auto", "on", "off"], default="auto",
                   help="time set_up_run and the first steps: auto = with CUDA (on: also on CPU, for --preset tiny)")
    a = p.parse_args()
    root = a.root or Path(tempfile.mkdtemp(prefix="vlmtrack_startup_"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"[startup] imports {time.perf_counter() - T_PROCESS:.1f}s; {os.cpu_count()} cores")
    try:
        data = build_set(root, a.records, a.images, max(1, min(16, os.cpu_count() or 1)))
        cpu_phases(data, root, a.tokenizer)
        if a.model_phases == "on" or (a.model_phases == "auto" and torch.cuda.is_available()):
            model_phases(data, root, a.preset, a.cache_build)
    finally:
        if not a.root:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
