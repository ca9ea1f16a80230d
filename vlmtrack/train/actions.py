"""What the loop does between steps, one plain function each: logs, evals, golden dumps, checkpoints, and
dropping a trial whose loss turned non-finite."""
from __future__ import annotations

import shutil
import time

from vlmtrack.data.golden import QUAL_DIR
from vlmtrack.eval.evaluate import evaluate
from vlmtrack.eval.golden_gen import generate_golden, write_golden
from vlmtrack.model.connector_io import META_FILE, WEIGHTS_FILE, checkpoint_dir, checkpoint_name, tower_reference
from vlmtrack.runtime import distributed as dist
from vlmtrack.train import checkpoint as ckpt
from vlmtrack.train.setup import Run
from vlmtrack.train.step import SANITY_KEYS, Window
from vlmtrack.train.trial import NonFiniteLossError, Trial


def drop_nonfinite(run: Run, window: Window, step: int, on_trial_failed=None) -> None:
    """Reads the on-device flag (the only host sync for it): a NaN is caught at the next log or save. A
    trial that failed leaves the run at once, `on_trial_failed(trial)` tells its caller; when none is left
    the run stops."""
    bad = [flag > 0 for flag in dist.all_reduce_sums(window.nonfinite.cpu().double())]  # every rank agrees
    if not any(bad):
        return
    t = run.cfg.train
    for tr, is_bad in zip(list(run.active), bad):
        if is_bad:
            tr.failed = (f"non-finite loss at or before step {step} (checked every {t.log_every} steps "
                         f"and before every save); last good checkpoint: {ckpt.latest_checkpoint(tr.out_dir)}")
            run.log(f"[error] {tr.name}: {tr.failed}")
            if on_trial_failed:
                on_trial_failed(tr)
    run.active[:] = [tr for tr, is_bad in zip(run.active, bad) if not is_bad]
    window.keep([not b for b in bad])
    if not run.active:
        raise NonFiniteLossError(run.trials[0].failed if len(run.trials) == 1 else "every trial has a non-finite loss")


def log_train(run: Run, window: Window, step: int) -> None:
    """Train loss (Σ loss / Σ tokens over the window, all ranks), lr, samples/s and epoch of each trial."""
    now = time.perf_counter()
    losses = [x / max(window.tokens, 1) for x in dist.all_reduce_sums(window.loss.cpu().double())]
    samples_per_s = (step - window.step_log) * run.cfg.train.batch_size / (now - window.t_log)
    for tr, loss in zip(run.active, losses):
        tr.tracker.log_metrics({"train_loss": loss, "lr": tr.scheduler.get_last_lr()[0],
                                "samples_per_s": samples_per_s, "epoch": step / run.steps_per_epoch}, step)
    window.loss.zero_()
    window.tokens, window.t_log, window.step_log = 0, now, step


def log_progress(run: Run, step: int, elapsed: float) -> None:
    run.log(f"[train] {100 * step / run.total_steps:.0f}% step={step}/{run.total_steps} "
            f"epoch={step / run.steps_per_epoch:.2f} elapsed={elapsed:.0f}s")


def log_epoch_data(run: Run, window: Window, step: int) -> None:
    """The epoch's data sanity over all ranks: truncated and label-less samples, mean label tokens."""
    s = dict(zip(SANITY_KEYS, map(int, dist.all_reduce_sums([window.sanity[k] for k in SANITY_KEYS]))))
    n = max(s["n"], 1)
    metrics = {"data_truncated_pct": 100 * s["truncated"] / n, "data_label_zero_pct": 100 * s["label_zero"] / n,
               "data_avg_label_tokens": s["label_tokens"] / n}
    run.log(f"[data] epoch={step // run.steps_per_epoch} truncated={metrics['data_truncated_pct']:.2f}% "
            f"label_zero={metrics['data_label_zero_pct']:.2f}% avg_label_tokens={metrics['data_avg_label_tokens']:.1f}")
    for tr in run.active:
        tr.tracker.log_metrics(metrics, step)
    window.sanity = dict.fromkeys(SANITY_KEYS, 0)


def full_eval(run: Run, step: int, batches: list[list[int]], kind: str = "eval") -> None:
    """Token-weighted loss of every active connector, overall and per bucket (`kind` names the metrics:
    eval or quick_eval); a full eval is also kept in the trial's evals and timed."""
    t0 = time.perf_counter()
    sums = evaluate(run.backbone, run.connectors(), run.eval_loader(batches), run.device, run.dtype)
    if kind == "eval":
        run.timing["full_eval_s"].append(time.perf_counter() - t0)
    for tr, s in zip(run.active, sums):
        metrics = s.metrics(kind)
        tr.tracker.log_metrics(metrics, step)
        if kind == "quick_eval" and tr.on_quick_eval:
            tr.on_quick_eval(metrics["quick_eval_loss"], step)
        if kind == "eval":
            tr.evals.append({"step": step, **metrics})
            buckets = [b for b in run.cfg.data.bucket_names if f"eval_loss_{b}" in metrics]
            run.log(f"[eval] {tr.name} step={step} loss={metrics['eval_loss']:.4f} "
                    + " ".join(f"{b}={metrics[f'eval_loss_{b}']:.4f}" for b in buckets))


def golden(run: Run, step: int) -> None:
    """Every active connector's golden captions, to qual/ and as a table with the images."""
    if not run.main:  # generation is rank 0's alone; the others wait at their next collective
        return
    data = run.data
    t0 = time.perf_counter()
    records = generate_golden(run.backbone, run.connectors(), data.golden, {s.id: s.human for s in data.samples},
                              data.image_root, run.cfg.model.num_latents, run.cfg.eval, run.device, run.dtype)
    run.timing["golden_s"].append(time.perf_counter() - t0)
    for tr, recs in zip(run.active, records):
        path = write_golden(recs, tr.out_dir, step, len(data.golden))
        tr.tracker.log_artifact(path, QUAL_DIR)
        tr.golden_tables.log(tr.tracker, recs, step, data.image_root)


def save(run: Run, step: int) -> None:
    """Each active trial's checkpoint; weights and their description go to the tracker (in MLflow: a logged
    model of the run at this step, with the step's eval metrics), the optimizer state stays local (resume). Then the checkpoints train.keep_checkpoints lets go are removed."""
    if not run.main:
        return
    towers = {"llm": tower_reference(run.cfg.model.llm), "vision": tower_reference(run.cfg.model.vision)}
    for tr in run.active:
        written = [c for c in tr.checkpoints if c["step"] != step] + [{"step": step, "run_id": tr.tracker.run_id}]
        drop = ckpt.checkpoints_to_drop([c["step"] for c in written], tr.evals, run.cfg.train.keep_checkpoints)
        tr.checkpoints = [c for c in written if c["step"] not in drop]  # what the trainer state lists
        path = ckpt.save_checkpoint(tr.out_dir, step, tr.connector, tr.optimizer, tr.scheduler,
                                    trainer_state(run, tr, step), towers)
        at_step = next((e for e in reversed(tr.evals) if e["step"] == step), {})  # this step's full eval, if any
        tr.tracker.log_checkpoint(step, [path / WEIGHTS_FILE, path / META_FILE],
                                  {k: v for k, v in at_step.items() if k != "step"})
        tr.tracker.set_tags({"last_checkpoint": checkpoint_name(step)})
        remove_checkpoints(run, tr, [c for c in written if c["step"] in drop])


def remove_checkpoints(run: Run, tr: Trial, dropped: list[dict]) -> None:
    """On disk and from MLflow: only checkpoints this training wrote (never one of an earlier training
    sharing the folder), and never one a registered model version uses (the tracker keeps it)."""
    if not dropped:
        return
    for c in dropped:
        shutil.rmtree(checkpoint_dir(tr.out_dir, c["step"]), ignore_errors=True)
        tr.tracker.delete_checkpoint(c["step"], c["run_id"])
    keep = run.cfg.train.keep_checkpoints
    best = ckpt.best_checkpoint([c["step"] for c in tr.checkpoints], tr.evals)
    why = f"the {keep} newest" + (f" and the best eval_loss {best[1]:.4f} (step_{best[0]})" if best else "")
    names = ", ".join(f"step_{c['step']}" for c in dropped)
    run.log(f"[checkpoint] {tr.name}: removed {names} (train.keep_checkpoints={keep} keeps {why})")


def trainer_state(run: Run, tr: Trial, step: int) -> dict:
    return {"step": step, "global_sample_index": step * run.cfg.train.batch_size, "evals": tr.evals,
            "timing": ckpt.packed_timing(run.timing), "checkpoints": tr.checkpoints}


def progress_bar(run: Run):
    """A tqdm bar over the steps when train.tqdm_disable is false (rank 0); the spec's runs keep it off and
    print a progress line every train.progress_percent of the run instead."""
    if run.cfg.train.tqdm_disable or not run.main:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=run.total_steps, initial=run.start_step, unit="step", dynamic_ncols=True)
