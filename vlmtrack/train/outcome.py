"""What a run leaves once its last step is taken: the ablations of every trial still training, and each
trial's outcome (final eval, ablations, step-time statistics, time budget, and the caller's score), written
to metrics.json and logged. A failed trial's outcome is its error."""
from __future__ import annotations

import time
from typing import Callable

from vlmtrack.config import Config
from vlmtrack.data.pipeline import BAD_SAMPLES
from vlmtrack.eval.ablations import order_text, run_ablations
from vlmtrack.files import write_json
from vlmtrack.train.setup import Run
from vlmtrack.train.steptime import step_time_stats
from vlmtrack.train.trial import Trial

# (outcome, trial config) -> the run's score, or None; the sweep owns the formula (sweep/score.py)
Scorer = Callable[[dict, Config], "float | None"]


def trial_outcomes(run: Run, step: int, bad_samples: list[dict], score: Scorer | None = None) -> list[dict]:
    if bad_samples and run.main:
        for tr in run.active:
            tr.tracker.log_artifact(tr.out_dir / BAD_SAMPLES)
    e = run.cfg.eval
    ablations = []
    if e.run_ablations and run.active:
        t0 = time.perf_counter()
        ablations = run_ablations(run.backbone, run.connectors(), run.eval_loader(run.ablation_batches),
                                  run.device, run.dtype, e.ablation_seed)
        run.wall["ablations_s"] = time.perf_counter() - t0
    outcomes = []
    for tr in run.trials:
        if tr.failed:
            outcomes.append({"status": "FAILED", "error": tr.failed})
            continue
        abl = ablations[run.active.index(tr)] if ablations else {}
        if abl:
            tr.tracker.log_metrics(abl, step)
            run.log(f"[ablation] {tr.name} " + " ".join(f"{k}={v:.4f}" for k, v in abl.items()))
            run.log(f"[ablation] {tr.name} order {order_text(abl)}")
        outcome = finished_outcome(run, tr, step, abl)
        if score and (value := score(outcome, tr.cfg)) is not None:
            outcome["score"] = value
        if run.main:
            record_outcome(run, tr, outcome)
        outcomes.append(outcome)
    return outcomes


def finished_outcome(run: Run, tr: Trial, step: int, abl: dict) -> dict:
    stats = step_time_stats(run.timing["step_s"], run.timing["data_wait_s"])
    budget = {}
    if stats:
        budget["est_epoch_wall_s"] = run.steps_per_epoch * stats["step_time_mean_s"]
    for key in ("full_eval_s", "golden_s"):
        if run.timing[key]:
            budget[f"{key[:-2]}_time_s"] = sum(run.timing[key]) / len(run.timing[key])
    for key, seconds in run.wall.items():  # startup_wall_s, loop_wall_s, ablations_wall_s
        budget[f"{key[:-2]}_wall_s"] = seconds
    split = run.data.split
    return {
        "status": "FINISHED", "step": step, "final_eval": tr.evals[-1] if tr.evals else {}, "evals": tr.evals,
        "ablations": abl, "step_time": stats, "budget": budget,
        "split": {"eval_hash": split.eval_hash, "bucket_counts": split.bucket_counts, "path": str(split.path)},
        "golden": {"path": str(run.data.golden_path), "hash": run.data.golden_hash},
    }


def record_outcome(run: Run, tr: Trial, outcome: dict) -> None:
    """metrics.json in the trial's output dir; its figures, the file, the split and golden set logged."""
    path = tr.out_dir / "metrics.json"
    write_json(path, outcome)
    score = {"score": outcome["score"]} if "score" in outcome else {}
    tr.tracker.log_metrics({**outcome["step_time"], **outcome["budget"], **score}, outcome["step"])
    tr.tracker.log_artifact(path)
    if run.data.split.path:
        tr.tracker.log_artifact(run.data.split.path, "splits")
    tr.tracker.log_artifact(run.data.golden_path, "golden")
