"""What an eval pays before its batches (issue 25): a loader forked anew for each eval against one kept
with its workers between evals (`Run.eval_loader`), in a process holding a large data set's metadata.

Builds (or reuses) the LLaVA-format set of benchmarks/startup.py (N records over M images), prepares it
as a run does (split, label lengths), caches the quick-eval images' features with the embedded demo's
tower (the spec's runs read cached features), then times `--passes` passes over the quick eval's batches,
each way, and prints the first-batch wait and the pass time.

    python benchmarks/eval_loader_start.py                        # 558,128 records over 32,000 images
    python benchmarks/eval_loader_start.py --records 50000 --images 2000 --passes 5
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's vlmtrack

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from vlmtrack.data.dataset import CaptionDataset  # noqa: E402
from vlmtrack.data.loader import chunks, loader, seeded_subset  # noqa: E402
from vlmtrack.data.pipeline import prepare_data  # noqa: E402
from vlmtrack.demo.assets import ensure_demo_assets  # noqa: E402
from vlmtrack.model.backbone import load_backbone  # noqa: E402
from vlmtrack.model.feature_cache import open_or_build  # noqa: E402


def startup_script():
    path = Path(__file__).resolve().parent / "startup.py"
    spec = importlib.util.spec_from_file_location("startup", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timed_pass(batches_of) -> tuple[float, float]:
    """(seconds to the first batch, seconds for the whole pass) of one pass over `batches_of()`."""
    t0 = time.perf_counter()
    first = None
    for _ in batches_of():
        first = first if first is not None else time.perf_counter() - t0
    return first or 0.0, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=558_128)
    p.add_argument("--images", type=int, default=32_000)
    p.add_argument("--root", type=Path, help="where the set is built (kept and reused); default a temp folder")
    p.add_argument("--workers", type=int, default=7, help="data workers (a run on CUDA: cores - 1, at most 12)")
    p.add_argument("--passes", type=int, default=10)
    a = p.parse_args()
    root = a.root or Path(tempfile.mkdtemp(prefix="vlmtrack_evalstart_"))
    bench = startup_script()
    data_path = bench.build_set(root, a.records, a.images, 8)
    demo = ensure_demo_assets()
    cfg = bench.run_config(data_path, root / "out_evalstart", [f"model.llm={demo.llm}", f"model.vision={demo.vision}"])
    bb = load_backbone(cfg.model.llm, cfg.model.vision)
    data = prepare_data(cfg, bb.tokenizer, cfg.output_dir)
    quick = seeded_subset(data.split.eval, cfg.train.quick_eval_size, cfg.train.seed)
    store = open_or_build(root / "features_evalstart", data.image_root, [data.metas[i].image_relpath for i in quick],
                          bb, torch.device("cpu"), log=lambda *_: None)
    ds = CaptionDataset(data.samples, data.metas, quick, bb.tokenizer, bb.image_processor, data.image_root,
                        bb.image_token_id, cfg.model.num_latents, cfg.data.max_seq_len, features=store)
    batches = chunks(list(range(len(ds))), cfg.eval.batch_size)
    print(f"[eval] {len(data.samples):,} records held; quick eval of {len(quick)} in {len(batches)} batches of "
          f"{cfg.eval.batch_size}, {a.workers} workers, {a.passes} passes each way")
    kept = loader(ds, batches, bb.pad_id, a.workers, False, cfg.eval.batch_size, persistent=True)
    ways = {"a new loader each eval (before)": lambda: loader(ds, batches, bb.pad_id, a.workers, False,
                                                             cfg.eval.batch_size),
            "one loader, workers kept (now)": lambda: kept}
    print("\n| loader | first batch s (mean) | pass s (mean) | pass s (first) |\n|---|---|---|---|")
    for name, batches_of in ways.items():
        runs = [timed_pass(batches_of) for _ in range(a.passes)]
        print(f"| {name} | {statistics.mean(r[0] for r in runs):.3f} | {statistics.mean(r[1] for r in runs):.3f} "
              f"| {runs[0][1]:.3f} |", flush=True)


if __name__ == "__main__":
    main()
