"""Where a full eval's time goes in vlmtrack's real loop: starting the eval loader (its worker processes),
waiting for batches, and the work on each batch (tower, connector, LLM, the loss read back). The bench
preset and JPEGs, train_trials with a full eval in the middle of training and one at the end.

    python benchmarks/eval_timing.py --preset small --batch 768 --steps 10 --regimes live live_whole cached
        # live: the loop's own eval loader (a live tower's eval batches in pieces); live_whole: one worker
        # a batch; cached: the feature cache
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from vlmtrack.bench.run import bench_config, build_preset, write_images
from vlmtrack.tracking.base import JsonlTracker
from vlmtrack.train import loop
from vlmtrack.train.loop import Trial, train_trials


def timed_loader(real, evals: list[dict]):
    """Wraps the loop's eval loader: when it started, and for each batch how long the loop waited for it
    and how long the loop worked on the one before."""
    def make(*args, **kw):
        t0 = time.perf_counter()
        batches = iter(real(*args, **kw))
        record = {"start_s": time.perf_counter() - t0, "waits": [], "works": []}
        evals.append(record)

        def timed():
            last = time.perf_counter()
            while True:
                asked = time.perf_counter()
                record["works"].append(asked - last)
                try:
                    b = next(batches)
                except StopIteration:
                    record["wall_s"] = time.perf_counter() - t0
                    return
                last = time.perf_counter()
                record["waits"].append(last - asked)
                yield b
        return timed()
    return make


def run(paths, data, root: Path, regime: str, batch: int, steps: int, workers: int) -> list[dict]:
    cfg = bench_config(paths, data, root / regime, batch, steps, workers=workers, kernels="auto",
                       cache="on" if regime == "cached" else "off", golden_batch=64, compile="on")
    cfg.data.group_by_length = True
    cfg.train.eval_at_steps = [steps // 2]
    evals: list[dict] = []
    real_loader, real_pieces = loop.loader, loop.eval_pieces
    loop.loader = timed_loader(real_loader, evals)
    if regime == "live_whole":
        loop.eval_pieces = lambda *_: 1
    try:
        train_trials([Trial(cfg, JsonlTracker())], print)
    finally:
        loop.loader, loop.eval_pieces = real_loader, real_pieces
    return evals


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=768)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--workers", type=int, default=14)
    ap.add_argument("--regimes", nargs="+", default=["live", "live_whole", "cached"])
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="vlmtrack-eval-timing-"))
    paths = build_preset(args.preset, root / "model")
    data = write_images(root / "data", args.images, max(1, min(args.workers, 8)))
    rows = [(regime, k, e) for regime in args.regimes
            for k, e in enumerate(run(paths, data, root, regime, args.batch, args.steps, args.workers))]
    print(f"\n## full evals ({args.preset} preset; eval 1 in the middle of training, eval 2 at the end)")
    print("| regime | eval | batches | loader start s | first batch wait s | other waits s | work s | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for regime, k, e in rows:
        print(f"| {regime} | {k + 1} | {len(e['waits'])} | {e['start_s']:.2f} | {e['waits'][0]:.2f} | "
              f"{sum(e['waits'][1:]):.2f} | {sum(e['works']):.2f} | {e.get('wall_s', float('nan')):.2f} |")
    for regime, k, e in rows:
        print(f"{regime} eval {k + 1}: waits " + " ".join(f"{w:.2f}" for w in e["waits"])
              + " | works " + " ".join(f"{w:.2f}" for w in e["works"]))


if __name__ == "__main__":
    main()
