"""What tracking costs: (1) a golden table of 64 images per checkpoint, MLflow's own image handling
(every image stored again at every checkpoint) against vlmtrack's (images once per run, tables point
at them), and what a save's golden tables cost at save 1 and at save 600 (the latest table and the
history table it adds to: the cost must not grow with the run); (2) per-step metric logging as the
training loop sees it (queued, batched) against direct synchronous log_metric calls; (3) a checkpoint save
as a logged model (model, its files, its eval metrics linked, the run's output) with retention deleting the
checkpoint that falls out of the kept set, at save 1 and at save 100+ of a run with the spec's ~556 saves, and
what the store holds at the end. Prints tables; run against a local store or a server:

    python benchmarks/logging_cost.py [--tracking-uri http://127.0.0.1:5000] [--checkpoints 4] [--saves 600]
    python benchmarks/logging_cost.py --only checkpoints [--checkpoint-saves 556] [--checkpoint-mb 8]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient

from vlmtrack.data.dataset import load_image
from vlmtrack.demo import synth
from vlmtrack.tracking.golden_tables import GoldenTables
from vlmtrack.tracking.mlflow_tracker import TABLES_TAG_LIMIT, MlflowTracker


def golden_rows(root: Path, n: int = 64) -> list[dict]:
    json_path = synth.write_dataset(root, n, seed=11, image_size=224)
    import json
    records = json.loads(json_path.read_text())
    return [{"id": r["id"], "image_relpath": r["image"], "gt_text": r["conversations"][1]["value"],
             "pred_text": "a red circle", "bucket": "short", "label_len": 4} for r in records]


def artifact_bytes(client: MlflowClient, run_id: str, path: str = "") -> int:
    total = 0
    for f in client.list_artifacts(run_id, path or None):
        total += artifact_bytes(client, run_id, f.path) if f.is_dir else (f.file_size or 0)
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tracking-uri", default=None)
    ap.add_argument("--checkpoints", type=int, default=4)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--saves", type=int, default=600, help="saves of golden tables for the save-cost rows")
    ap.add_argument("--checkpoint-saves", type=int, default=556, help="checkpoint saves (the spec's full run: ~556)")
    ap.add_argument("--checkpoint-mb", type=float, default=8.0, help="size of a checkpoint's weights file")
    ap.add_argument("--keep", type=int, default=3, help="train.keep_checkpoints")
    ap.add_argument("--only", choices=["checkpoints"], default=None)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    uri = args.tracking_uri or f"sqlite:///{tmp}/bench.db"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    if args.only == "checkpoints":
        exp = client.create_experiment(f"checkpoint-cost-{time.time_ns()}", artifact_location=str(tmp / "artifacts"))
        print_checkpoint_costs(client, exp, tmp, args)
        return
    rows = golden_rows(tmp / "data")
    images = tmp / "data" / "images"
    exp = client.create_experiment(f"logging-cost-{time.time_ns()}")

    # (1a) MLflow's own: PIL images in the table, stored again at each checkpoint
    naive = client.create_run(exp, run_name="naive").info.run_id
    t0 = time.perf_counter()
    for k in range(args.checkpoints):
        df = pd.DataFrame([{**r, "image": load_image(images, r["image_relpath"])} for r in rows])
        client.log_table(naive, df, f"golden/step_{k}.json")
    naive_s = (time.perf_counter() - t0) / args.checkpoints
    # (1b) vlmtrack: images once per run; measured until the background queue has drained
    tr = MlflowTracker(experiment_id=exp, run_name="vlmtrack")
    t0 = time.perf_counter()
    caller = 0.0
    for k in range(args.checkpoints):
        c0 = time.perf_counter()
        tr.log_table(rows, f"golden/step_{k}.json", image_root=images, image_column="image_relpath")
        caller += time.perf_counter() - c0
    tr.flush()
    ours_s = (time.perf_counter() - t0) / args.checkpoints
    save_s, tag_chars = golden_save_costs(client, exp, rows, images, args.saves)

    # (2) per-step metrics: 4 metrics per step
    t0 = time.perf_counter()
    for step in range(args.steps):
        tr.log_metrics({"train_loss": 1.0, "lr": 1e-4, "samples_per_s": 100.0, "epoch": 0.1}, step)
    step_caller_us = (time.perf_counter() - t0) / args.steps * 1e6
    tr.finish()
    direct = client.create_run(exp, run_name="direct").info.run_id
    n_direct = min(args.steps, 200)
    t0 = time.perf_counter()
    for step in range(n_direct):
        for key in ("train_loss", "lr", "samples_per_s", "epoch"):
            client.log_metric(direct, key, 1.0, step=step)
    direct_us = (time.perf_counter() - t0) / n_direct * 1e6

    mb = 1 / 2**20
    print(f"tracking store: {uri}; {len(rows)} golden images (224 px); {args.checkpoints} checkpoints\n")
    print("| what | cost in the training loop | stored |")
    print("|---|---|---|")
    print(f"| golden table, MLflow images in the table | {naive_s:.2f} s per checkpoint (blocking) | "
          f"{artifact_bytes(client, naive) * mb:.2f} MiB |")
    print(f"| golden table, vlmtrack (images once, queued) | {caller / args.checkpoints * 1e3:.1f} ms per checkpoint "
          f"(worker: {ours_s:.2f} s, in background) | {artifact_bytes(client, tr.run_id) * mb:.2f} MiB |")
    print(f"| 4 metrics per step, vlmtrack (queued, batched) | {step_caller_us:.0f} µs per step | |")
    print(f"| 4 metrics per step, direct log_metric calls | {direct_us:.0f} µs per step (blocking) | |")
    print(f"\nA save's golden tables (latest + its history table), delivered, {args.saves} saves on one run:\n")
    print("| save | worker s |\n|---|---|")
    for k in sorted({1, 2, 25, 26, args.saves - 1, args.saves}):
        print(f"| {k} | {save_s[k - 1]:.3f} |")
    late = save_s[-25:]
    print(f"| mean of saves 2-25 / last 25 | {sum(save_s[1:25]) / 24:.3f} / {sum(late) / len(late):.3f} |")
    print(f"\nmlflow.loggedArtifacts after {args.saves} saves: {tag_chars:,} characters (MLflow cuts at "
          f"{TABLES_TAG_LIMIT:,})")


def golden_save_costs(client: MlflowClient, exp: str, rows: list[dict], images: Path, saves: int):
    """Each save's golden tables timed until delivered (the first save uploads the images too); and the
    length of the run's table list at the end."""
    tr, tables, save_s = MlflowTracker(experiment_id=exp, run_name=f"{saves} saves"), GoldenTables(), []
    for k in range(1, saves + 1):
        t0 = time.perf_counter()
        tables.log(tr, rows, step=k, image_root=images)
        tr.flush()
        save_s.append(time.perf_counter() - t0)
    tr.finish()
    return save_s, len(client.get_run(tr.run_id).data.tags.get("mlflow.loggedArtifacts", ""))


def checkpoint_save_costs(client: MlflowClient, exp: str, tmp: Path, saves: int, keep: int, mb: float):
    """Each save timed until delivered: the checkpoint's logged model (weights + connector.json, 12 eval metrics
    linked) and retention's delete of the checkpoint it lets go (the `keep` newest and the best stay, as in
    train.keep_checkpoints; the best eval here is save 1's). Returns the seconds per save and the run."""
    from vlmtrack.train.checkpoint import checkpoints_to_drop

    files = tmp / "ckpt"
    files.mkdir()
    (files / "connector.safetensors").write_bytes(os.urandom(int(mb * 2**20)))
    (files / "connector.json").write_text('{"connector": {}}')
    tr, written, save_s = MlflowTracker(experiment_id=exp, run_name=f"{saves} checkpoint saves"), [], []
    evals = []
    for k in range(1, saves + 1):
        t0 = time.perf_counter()
        metrics = {f"eval_loss{b}": 1.0 + k / saves for b in ("", "_short", "_medium", "_long")}
        metrics |= {f"eval_{w}_{b}": 100.0 for w in ("label_tokens", "examples") for b in ("short", "medium", "long", "total")}
        evals.append({"step": k, **metrics})
        tr.log_metrics(metrics, k)
        written.append(k)
        drop = checkpoints_to_drop(written, evals, keep)
        tr.log_checkpoint(k, [files / "connector.safetensors", files / "connector.json"], metrics)
        for d in drop:
            tr.delete_checkpoint(d)
        written = [s for s in written if s not in drop]
        tr.flush()
        save_s.append(time.perf_counter() - t0)
    tr.finish()
    return save_s, tr.run_id


def print_checkpoint_costs(client: MlflowClient, exp: str, tmp: Path, args) -> None:
    save_s, run_id = checkpoint_save_costs(client, exp, tmp, args.checkpoint_saves, args.keep, args.checkpoint_mb)
    n = len(save_s)
    live = client.search_logged_models([exp], filter_string=f"source_run_id='{run_id}'")
    on_disk = [p for p in (tmp / "artifacts" / "models").glob("*/artifacts/*")] if (tmp / "artifacts").exists() else []
    print(f"tracking store: {client.tracking_uri}; {n} checkpoint saves of {args.checkpoint_mb:g} MiB weights, "
          f"train.keep_checkpoints={args.keep}\n")
    print("| save | seconds (logged model + linked metrics + retention delete, delivered) |\n|---|---|")
    for k in sorted({1, 2, 3, 10, 100, 101, 250, n - 1, n}):
        if 1 <= k <= n:
            print(f"| {k} | {save_s[k - 1]:.3f} |")
    means = [save_s[1:25], save_s[99:124], save_s[-25:]]
    print("| mean of saves 2-25 / 100-124 / last 25 | "
          + " / ".join(f"{sum(m) / len(m):.3f}" if m else "–" for m in means) + " |")
    size = sum(p.stat().st_size for p in on_disk) / 2**20
    print(f"\nat the end: {len(live)} live logged models ({', '.join(sorted(m.name for m in live))}); "
          f"{len(on_disk)} checkpoint files in the artifact store ({size:.1f} MiB); "
          f"run artifacts under checkpoints/: {len(client.list_artifacts(run_id, 'checkpoints'))}; "
          f"run's eval_loss history: {len(client.get_metric_history(run_id, 'eval_loss'))} points")


if __name__ == "__main__":
    main()
