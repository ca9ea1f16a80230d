"""Where vlmtrack's real training loop spends a step on the GPU: the bench preset and JPEGs, the real
pipeline and loop (train_trials), with torch.profiler over a few steps past the warm-up. Prints, per
regime, the wall time of those steps and the kernels that took the most of the GPU's time.

    python benchmarks/profile_loop.py --preset small --batch 384 --regimes compiled_cached compiled_live
        # a regime: [compiled_|fused_](cached|live); compiled = train.compile on, fused = liger kernels
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from torch.profiler import ProfilerActivity, profile, schedule

from vlmtrack.bench.run import bench_config, build_preset, flops_per_sample, write_images
from vlmtrack.tracking.base import JsonlTracker
from vlmtrack.train import step
from vlmtrack.train.loop import Trial, train_trials


def profiled_batches(prof, wall: list[float]):
    """Wraps the loop's batch source: each batch fetched is a profiler step (the loop fetches one a step)."""
    real = step.train_batches

    def train_batches(*args, **kw):
        batches = real(*args, **kw)

        def stepped():
            for b in batches:
                prof.step()
                wall.append(time.perf_counter())
                yield b
        return iter(stepped())
    return train_batches


def run_regime(paths, data, root: Path, regime: str, batch: int, steps: int, first: int, active: int, rows: int):
    cached = regime.endswith("cached")
    cfg = bench_config(paths, data, root / regime, batch, steps, workers=14, kernels="auto",
                       cache="on" if cached else "off", golden_batch=64,
                       compile="on" if regime.startswith("compiled") else "off")
    cfg.data.group_by_length = True
    wall: list[float] = []
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA],
                 schedule=schedule(wait=first - 1, warmup=1, active=active, repeat=1)) as prof:
        real = step.train_batches
        step.train_batches = profiled_batches(prof, wall)
        try:
            train_trials([Trial(cfg, JsonlTracker())], print)
        finally:
            step.train_batches = real
    # fetch k happens at the start of step k; the active window is fetches first..first+active
    # (the table's "Self CUDA time total" is the GPU time of those steps; summing prof.events() instead
    # counts inductor's kernel annotations and the step markers a second time)
    span = wall[first + active] - wall[first]
    fps = flops_per_sample(paths["preset"])
    print(f"\n### {regime}, batch {batch}: steps {first}..{first + active - 1}")
    print(f"wall {span / active:.4f} s per step under the profiler ({batch * active / span:.0f} samples/s, "
          f"{batch * active / span * fps / 1e12:.0f} model TFLOP/s)")
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=rows, max_name_column_width=90))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--batch", type=int, default=384)
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--first", type=int, default=12, help="first profiled step (after the compile warm-up)")
    ap.add_argument("--active", type=int, default=4)
    ap.add_argument("--rows", type=int, default=30)
    ap.add_argument("--regimes", nargs="+", default=["compiled_cached", "compiled_live"])
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="vlmtrack-profile-"))
    paths = build_preset(args.preset, root / "model")
    data = write_images(root / "data", args.images)
    for regime in args.regimes:
        run_regime(paths, data, root, regime, args.batch, args.steps, args.first, args.active, args.rows)


if __name__ == "__main__":
    main()
