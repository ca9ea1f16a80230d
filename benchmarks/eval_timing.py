"""Where a full eval's time goes in vlmtrack's real loop: starting the eval loader (its worker processes),
waiting for batches, and the work on each batch (tower, connector, LLM, the loss read back). The bench
preset and JPEGs, train_trials with a full eval in the middle of training and one at the end.

    python benchmarks/eval_timing.py --preset small --batch 768 --steps 10 --regimes live live_whole cached
        # live / cached: the loop's own loaders, with the tower or the feature cache; a suffix changes one
        # thing: _whole, one worker an eval batch; _pieces, eval batches in pieces (eval_pieces);
        # _endless, the training loader reads on past the last step (as before 2026-12-03).
        # "busy cores": the machine's CPU time during the eval over its wall time
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from vlmtrack.bench.run import bench_config, build_preset, write_images
from vlmtrack.tracking.base import JsonlTracker
from vlmtrack.train.checkpoint import load_trainer_state
from vlmtrack.train import setup, step
from vlmtrack.train.loop import Trial, train_trials


def cpu_busy_s() -> float:
    """Seconds of CPU time the whole machine has spent busy (not idle or waiting for I/O) since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def timed_loader(real, evals: list[dict], profile_first: bool = False):
    """Wraps the loop's eval loader: when it started, and for each batch how long the loop waited for it
    and how long the loop worked on the one before. With `profile_first`, the work on the first batch of
    the first eval runs under torch.profiler and its table is printed (that batch's work time then
    includes the profiler's own)."""
    def make(*args, **kw):
        t0, cpu0 = time.perf_counter(), cpu_busy_s()
        batches = iter(real(*args, **kw))
        record = {"start_s": time.perf_counter() - t0, "waits": [], "works": []}
        evals.append(record)
        profiled = profile_first and len(evals) == 1

        def timed():
            last = time.perf_counter()
            while True:
                asked = time.perf_counter()
                record["works"].append(asked - last)
                try:
                    b = next(batches)
                except StopIteration:
                    record["wall_s"] = time.perf_counter() - t0
                    record["busy_cores"] = (cpu_busy_s() - cpu0) / record["wall_s"]
                    return
                last = time.perf_counter()
                record["waits"].append(last - asked)
                if not (profiled and len(record["waits"]) == 1):
                    yield b
                    continue
                activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])]
                with profile(activities=activities) as prof:
                    yield b
                print("[profile] the work on the first batch of the first eval")
                print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=25, max_name_column_width=70))
        return timed()
    return make


def run(paths, data, root: Path, regime: str, batch: int, steps: int, workers: int,
        profile_first: bool = False) -> list[dict]:
    vision, _, variant = regime.partition("_")
    cfg = bench_config(paths, data, root / regime, batch, steps, workers=workers, kernels="auto",
                       cache="on" if vision == "cached" else "off", golden_batch=64, compile="on")
    cfg.data.group_by_length = True
    cfg.train.eval_at_steps = [steps // 2]
    evals: list[dict] = []
    real_loader, real_pieces, real_train = setup.loader, setup.eval_pieces, step.train_batches
    setup.loader = timed_loader(real_loader, evals, profile_first)
    if variant == "whole":
        setup.eval_pieces = lambda *_: 1
    if variant == "pieces":
        setup.eval_pieces = lambda size, n, _: real_pieces(size, n, True)
    if variant == "endless":
        step.train_batches = lambda *args, stop_step=None, **kw: real_train(*args, **kw)
    try:
        train_trials([Trial(cfg, JsonlTracker())], print)
    finally:
        setup.loader, setup.eval_pieces, step.train_batches = real_loader, real_pieces, real_train
    timing = load_trainer_state(root / regime / "checkpoints" / f"step_{steps}")["timing"]
    print(f"[{regime}] step s: " + " ".join(f"{s:.3f}" for s in timing["step_s"]))
    print(f"[{regime}] data wait s: " + " ".join(f"{s:.3f}" for s in timing["data_wait_s"]))
    return evals


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=768)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--workers", type=int, default=14)
    ap.add_argument("--regimes", nargs="+", default=["live", "live_whole", "cached"])
    ap.add_argument("--profile-first", action="store_true",
                    help="profile the work on the first eval's first batch in the first regime")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="vlmtrack-eval-timing-"))
    paths = build_preset(args.preset, root / "model")
    data = write_images(root / "data", args.images, max(1, min(args.workers, 8)))
    rows = [(regime, k, e) for regime in args.regimes
            for k, e in enumerate(run(paths, data, root, regime, args.batch, args.steps, args.workers,
                                      args.profile_first and regime == args.regimes[0]))]
    print(f"\n## full evals ({args.preset} preset; eval 1 in the middle of training, eval 2 at the end)")
    print("| regime | eval | batches | loader start s | first batch wait s | other waits s | work s | wall s | "
          "busy cores |")
    print("|---|---|---|---|---|---|---|---|---|")
    for regime, k, e in rows:
        print(f"| {regime} | {k + 1} | {len(e['waits'])} | {e['start_s']:.2f} | {e['waits'][0]:.2f} | "
              f"{sum(e['waits'][1:]):.2f} | {sum(e['works']):.2f} | {e.get('wall_s', float('nan')):.2f} | "
              f"{e.get('busy_cores', float('nan')):.1f} |")
    for regime, k, e in rows:
        print(f"{regime} eval {k + 1}: waits " + " ".join(f"{w:.2f}" for w in e["waits"])
              + " | works " + " ".join(f"{w:.2f}" for w in e["works"]))


if __name__ == "__main__":
    main()
