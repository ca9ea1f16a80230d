"""Wall time of the demo sweep (six trials), side by side against one by one, measured in one run
through the real entry point (`vlmtrack sweep`), each against its own temporary MLflow store.

    python benchmarks/demo_sweep_wall.py [--config configs/demo_sweep.yaml] [override ...]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(side_by_side: bool, config: str, overrides: list[str], tmp: Path) -> tuple[float, str]:
    mode = "side_by_side" if side_by_side else "one_by_one"
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp}/{mode}.db")
    env.pop("MLFLOW_RUN_ID", None)
    cmd = [sys.executable, "-m", "vlmtrack.cli", "sweep", "--config", config, f"sweep.side_by_side={side_by_side}",
           f"sweep.study_name=wall_{mode}", f"sweep.output_dir={tmp}/{mode}",
           f"data.golden_set_path={tmp}/golden.jsonl", *overrides]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode:
        sys.exit(done.stdout[-3000:] + done.stderr[-3000:])
    summary = done.stdout[done.stdout.find("[sweep] summary"):]
    return wall, summary


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/demo_sweep.yaml")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sweep-wall-"))
    side, side_summary = run(True, args.config, args.overrides, tmp)
    alone, alone_summary = run(False, args.config, args.overrides, tmp)
    print(side_summary)
    print(alone_summary)
    print("| mode | wall (s) |\n|---|---|")
    print(f"| side by side (one process, one backbone pass) | {side:.0f} |")
    print(f"| one by one | {alone:.0f} |")
    print(f"\nspeed-up: {alone / side:.2f}x  (cpu threads: {os.cpu_count()}, config {args.config}; stores in {tmp})")


if __name__ == "__main__":
    main()
