"""One sweep worker: asks the study for grid points, trains them through a trial runner, tells Optuna
the score, and when the grid is complete writes the summary to the parent run."""
from __future__ import annotations

import contextlib
import time
import traceback
from typing import Callable

import optuna

from vlmtrack.config import Config, describe_point
from vlmtrack.data.pipeline import prepare_data
from vlmtrack.sweep import study as S
from vlmtrack.sweep.groups import choose_group_size
from vlmtrack.sweep.score import composite_score
from vlmtrack.sweep.summary import write_summary
from vlmtrack.tracking.optuna_plots import log_study_plots
from vlmtrack.tracking.session import note_tracking_losses
from vlmtrack.train.loop import train_trials
from vlmtrack.train.trial import Trial

TrialRunner = Callable[..., list[dict]]


def finish_failed(trial: Trial, error: str | None = None) -> None:
    """A trial that failed (alone, or inside its group while the others train on): its run is marked
    FAILED at once."""
    trial.tracker.finish("FAILED", error or trial.failed)


@contextlib.contextmanager
def killed_on_interrupt(trials: list[Trial]):
    """Ctrl-C marks the trials being trained KILLED (the first status a run gets is the one it keeps)."""
    try:
        yield
    except KeyboardInterrupt:
        for tr in trials:
            tr.tracker.finish("KILLED", "interrupted (Ctrl-C)")
        raise


def side_by_side(trials: list[Trial], log=print) -> list[dict]:
    """Trains the group together over one backbone pass per batch; a trial whose loss turns non-finite
    fails alone. An error that stops the whole group fails each of its trials."""
    with killed_on_interrupt(trials):
        try:
            return train_trials(trials, log, score=composite_score, on_trial_failed=finish_failed)
        except Exception as e:  # noqa: BLE001
            error = f"{type(e).__name__}: {e}"
            for tr in trials:
                finish_failed(tr, f"{error}\n{traceback.format_exc()[-3000:]}")
            log(f"[sweep] group of {len(trials)} FAILED: {error}")
            return [{"status": "FAILED", "error": error} for _ in trials]


def one_by_one(trials: list[Trial], log=print) -> list[dict]:
    """Trains each trial alone; a trial that raises is reported FAILED and the others go on."""
    results = []
    for tr in trials:
        with killed_on_interrupt([tr]):
            try:
                results.append(train_trials([tr], log, score=composite_score)[0])
            except Exception as e:  # noqa: BLE001 - one trial's failure must not end the sweep
                error = f"{type(e).__name__}: {e}"
                finish_failed(tr, f"{error}\n{traceback.format_exc()[-3000:]}")
                log(f"[sweep] {tr.name} FAILED: {error}")
                results.append({"status": "FAILED", "error": error})
    return results


def run_sweep(cfg: Config, open_parent, make_tracker, tokenizer_for_hashes, log=print,
              on_winner: Callable | None = None) -> optuna.Study:
    """One worker: queue what is missing, then pop queued grid points (a group at a time, trained side by
    side or one by one), tell Optuna each score; wait for other workers' running trials (a dead one's
    is retried); write the summary when the grid is complete. The study has one parent run, shared by its
    workers: `open_parent(run_id)` opens it (None: a new one, for the study's first worker);
    `make_tracker(name, parent_run_id)` opens a nested run; `on_winner(row, parent)` gets the winner's
    summary row, once per study, from the worker that writes the summary (the CLI promotes it)."""
    study = S.open_study(cfg)
    data = prepare_data(cfg, tokenizer_for_hashes, S.sweep_dir(cfg) / "shared")
    S.pin_hashes(study, data.split.eval_hash, data.golden_hash)
    with S.study_lock(cfg):  # one parent run per study, however many workers start at once
        parent = open_parent(study.user_attrs.get(S.PARENT_RUN))
        if S.PARENT_RUN not in study.user_attrs and parent.run_id:
            study.set_user_attr(S.PARENT_RUN, parent.run_id)
    parent_run_id = study.user_attrs.get(S.PARENT_RUN, parent.run_id)
    with ending_parent(study, cfg, parent):
        with S.study_lock(cfg):  # and one queue
            end_dead_runs(S.fail_stale(study), parent, cfg, log)
            queued = S.enqueue_missing(study, cfg)
        parent.set_tags({"optuna_study": cfg.sweep.study_name, "split_hash": data.split.eval_hash,
                         "optuna_storage": S.storage_url(cfg).split("@")[-1], "golden_hash": data.golden_hash})
        log(f"[sweep] study {cfg.sweep.study_name}: grid {S.grid(cfg)}; {queued} point(s) queued; "
            f"storage {S.storage_url(cfg)}; parent run {parent_run_id}")
        work(study, cfg, parent, make_tracker, parent_run_id, data, log)
        if S.grid_complete(study, cfg):
            rows = summarise_once(study, cfg, parent, log)
            if rows and on_winner:
                on_winner(rows[0], parent)
        else:
            log("[sweep] some grid points failed: re-run the sweep to retry them")
    return study


def work(study: optuna.Study, cfg: Config, parent, make_tracker, parent_run_id, data, log) -> None:
    """Trains queued points until none is queued and no other worker has one running."""
    group_size = choose_group_size(cfg, len(S.grid_points(cfg)), log)
    runner: TrialRunner = side_by_side if group_size > 1 else one_by_one

    def start(t: optuna.Trial) -> Trial:
        tc = S.trial_config(cfg, t)
        tracker = make_tracker(tc.train.run_name, parent_run_id)
        tracker.set_tags({"optuna_trial_number": t.number, "optuna_study": cfg.sweep.study_name,
                          "sweep_worker": S.worker_name()})
        t.set_user_attr("mlflow_run_id", tracker.run_id)
        t.set_user_attr("output_dir", tc.train.output_dir)
        log(f"[sweep] trial {t.number}: {describe_point(t.params)} -> {tc.train.output_dir}")
        return Trial(tc, tracker, expected_hashes=(data.split.eval_hash, data.golden_hash),
                     on_quick_eval=reporter(t, log))

    while True:
        with S.study_lock(cfg):  # a dead worker's trial is failed and its point re-queued by one worker
            end_dead_runs(S.fail_stale(study), parent, cfg, log)
        group = S.pop_trials(study, cfg, group_size)
        if not group:
            if not S.others_running(study):
                break
            time.sleep(cfg.sweep.heartbeat_s)  # other workers' trials: finished, or stale and re-queued
            continue
        with S.heartbeats(study, group, cfg.sweep.heartbeat_s):
            trials = [start(t) for t in group]
            results = runner(trials, log)
        for t, tr, result in zip(group, trials, results):
            if result.get("status") != "FINISHED" or "score" not in result:
                error = str(result.get("error", "no score (eval.run_ablations is off)"))
                t.set_user_attr("error", error[:1000])
                S.tell(study, t, failed=True)
                finish_failed(tr, error)  # a no-op for a run already marked FAILED
                continue
            record_result(t, result, cfg)
            S.tell(study, t, result["score"])
            tr.tracker.log_metrics({"score": result["score"]}, result["step"])
            tr.tracker.finish("FINISHED")
            note_tracking_losses(tr.out_dir / "metrics.json", tr.tracker)


def end_dead_runs(stale: list, parent, cfg: Config, log) -> None:
    """A worker killed with SIGKILL cannot end its trials' MLflow runs: the worker that finds them stale
    marks them KILLED (their points are queued again, ahead of the rest)."""
    for t in stale:
        why = (f"worker {t.user_attrs.get(S.WORKER, '?')} stopped: no heartbeat for "
               f"{4 * cfg.sweep.heartbeat_s:g} s; the point is queued again")
        log(f"[sweep] trial {t.number} ({describe_point(t.params)}): {why}")
        if t.user_attrs.get("mlflow_run_id"):
            parent.end_run(t.user_attrs["mlflow_run_id"], "KILLED", why)


def summarise_once(study: optuna.Study, cfg: Config, parent, log) -> list[dict] | None:
    """The summary goes to the study's one parent run, written by the first worker to find the grid
    complete (a re-run of a complete study finds it written); returns its rows, best first, to that worker
    alone."""
    with S.study_lock(cfg):
        if S.SUMMARY_BY in study.user_attrs:
            log(f"[sweep] grid complete; summary written by {study.user_attrs[S.SUMMARY_BY]}")
            return None
        rows = write_summary(study, cfg, parent, log)
        log_study_plots(study, parent)
        study.set_user_attr(S.SUMMARY_BY, S.worker_name())
    return rows


@contextlib.contextmanager
def ending_parent(study: optuna.Study, cfg: Config, parent):
    """The parent run is the study's: FINISHED once the grid is complete. A worker that leaves it
    incomplete (failed points, an error, Ctrl-C) marks it FAILED or KILLED, unless another worker has a
    trial running: then it stays RUNNING for them (a re-run attaches to it again)."""
    def end(status: str, error: str) -> None:
        try:
            others = S.others_running(study)
        except Exception:  # noqa: BLE001 - the storage is what failed: no one can be told apart
            others = False
        if others:
            parent.finish("RUNNING")
        else:
            parent.finish(status, error)

    try:
        yield
    except KeyboardInterrupt:
        end("KILLED", "interrupted (Ctrl-C)")
        raise
    except BaseException as e:
        end("FAILED", f"{type(e).__name__}: {e}\n{traceback.format_exc()[-3000:]}")
        raise
    if S.grid_complete(study, cfg):
        parent.finish("FINISHED")
    else:
        end("FAILED", "some grid points failed: re-run the sweep to retry them")


def reporter(t: optuna.Trial, log=print) -> Callable[[float, int], None]:
    """The trial's quick-eval losses as Optuna intermediate values (`trial.report`): optuna-dashboard draws
    them as learning curves. A report the storage refuses is said once and counted in the trial's user attr
    `report_failures`; the trial trains on (nothing prunes on these values)."""
    failures = 0

    def report(loss: float, step: int) -> None:
        nonlocal failures
        try:
            t.report(loss, step)
        except Exception as e:  # noqa: BLE001 - a learning-curve point is not worth a trial
            failures += 1
            if failures == 1:
                log(f"[sweep] warning: trial {t.number}: Optuna did not take the quick-eval loss at step {step}: "
                    f"{type(e).__name__}: {e}")
            with contextlib.suppress(Exception):
                t.set_user_attr("report_failures", failures)
    return report


def record_result(t: optuna.Trial, result: dict, cfg: Config) -> None:
    final, abl = result["final_eval"], result["ablations"]
    mid = [e for e in result["evals"] if e["step"] in cfg.train.eval_at_steps]
    attrs = {"eval_loss_end": final["eval_loss"], "delta_shuffle": abl["delta_shuffle"],
             "delta_zero": abl["delta_zero"], "delta_noise": abl["delta_noise"],
             "ablation_order_ok": abl["ablation_order_ok"], "score": result["score"], "step": result["step"]}
    if mid:
        attrs[f"eval_loss_step{mid[0]['step']}"] = mid[0]["eval_loss"]
    for k, v in attrs.items():
        t.set_user_attr(k, v)
