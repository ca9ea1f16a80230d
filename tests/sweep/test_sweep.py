import itertools

import pytest
import yaml
from optuna.trial import TrialState

from tests.helpers.tiny_models import tiny_config
from vlmtrack.data.llava import DataError
from vlmtrack.model.backbone import load_tokenizer
from vlmtrack.sweep import study as S
from vlmtrack.sweep.run import run_sweep
from vlmtrack.tracking.base import JsonlTracker

_ids = itertools.count()


def tracker(name=None, parent=None):
    t = JsonlTracker()
    t.run_id = f"run-{next(_ids)}"
    t.parent = parent
    return t


def sweep_cfg(tiny_paths, tmp_path):
    cfg = tiny_config(tiny_paths, tmp_path / "unused", train_steps=4, save_every=4, quick_eval_steps=0,
                      eval_at_steps=[2])
    cfg.sweep.lr, cfg.sweep.vision_ln = [1e-3, 3e-3], [False, True]
    cfg.sweep.output_dir, cfg.sweep.study_name = str(tmp_path / "sweep"), "tiny-sweep"
    return cfg


def test_sweep_runs_each_grid_point_once_and_summarises(tiny_paths, tmp_path):
    cfg = sweep_cfg(tiny_paths, tmp_path)
    cfg.train.quick_eval_steps = 1  # quick evals at steps 1, 2, 3: each trial's learning curve in Optuna
    parent, children = tracker(), []

    def make(name, parent_id):
        children.append(tracker(name, parent_id))
        return children[-1]

    tok = load_tokenizer(cfg.model.llm)
    study = run_sweep(cfg, lambda run_id: parent, make, tok, log=lambda *_: None)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert sorted(S.point_key(t.params) for t in done) == sorted(
        S.point_key({"lr": lr, "vision_ln": ln}) for lr in (1e-3, 3e-3) for ln in (False, True))
    assert len({t.user_attrs["output_dir"] for t in done}) == 4  # no two trials share a directory
    for t in done:
        a = t.user_attrs
        assert t.value == pytest.approx(a["eval_loss_end"] - 0.1 * (a["delta_shuffle"] + a["delta_zero"]))
        assert "eval_loss_step2" in a
        child = next(c for c in children if c.run_id == a["mlflow_run_id"])
        assert child.parent == parent.run_id and child.status == "FINISHED"
        assert any(e["kind"] == "tags" and e["tags"].get("optuna_trial_number") == t.number for e in child.events)
        assert t.intermediate_values == dict(child.metrics("quick_eval_loss")) and sorted(t.intermediate_values) == [1, 2, 3]
        assert [e["kind"] for e in child.events].count("datasets") == 1  # every trial logs its lineage
    tables = [e["artifact_file"] for e in parent.events if e["kind"] == "table"]
    assert tables == ["sweep/summary.json", "sweep/golden_side_by_side.json"]
    figures = [e["artifact_file"] for e in parent.events if e["kind"] == "figure"]
    assert figures == ["sweep/scores.png", "sweep/optuna/optimization_history.png", "sweep/optuna/slice.png",
                       "sweep/optuna/contour_lr_vision_ln.png"]  # Optuna's own plots once the grid is done
    winner = min(done, key=lambda t: t.value)
    wc = yaml.safe_load((tmp_path / "sweep" / "winner_config.yaml").read_text())
    assert wc["train"]["lr"] == winner.params["lr"] and wc["model"]["vision_ln"] == winner.params["vision_ln"]
    assert (tmp_path / "sweep" / "sweep_trial_summary.csv").read_text().count("\n") == 5

    assert parent.status == "FINISHED" and study.user_attrs[S.PARENT_RUN] == parent.run_id

    # a re-run on the same storage finds nothing left to do: it attaches to the study's parent run, and the
    # summary is not written twice
    opened = []
    again = run_sweep(cfg, lambda run_id: opened.append(run_id) or tracker(), make, tok, log=lambda *_: None)
    assert len(again.get_trials(states=(TrialState.COMPLETE,))) == 4 and len(children) == 4
    assert not again.get_trials(states=(TrialState.WAITING, TrialState.RUNNING))
    assert opened == [parent.run_id] and again.user_attrs[S.SUMMARY_BY] == S.worker_name()


def test_worker_with_other_data_is_refused(tiny_paths, tmp_path):
    cfg = sweep_cfg(tiny_paths, tmp_path)
    study = S.open_study(cfg)
    study.set_user_attr("split_hash", "aaaa")
    study.set_user_attr("golden_hash", "bbbb")
    with pytest.raises(DataError, match="would not be comparable"):
        run_sweep(cfg, lambda run_id: tracker(), tracker, load_tokenizer(cfg.model.llm), log=lambda *_: None)


def test_sweep_side_by_side_group(tiny_paths, tmp_path, monkeypatch):
    from vlmtrack.sweep import run as sweep_run

    cfg = sweep_cfg(tiny_paths, tmp_path)
    cfg.sweep.group_size = 4
    groups = []
    real = sweep_run.train_trials
    monkeypatch.setattr(sweep_run, "train_trials", lambda trials, log=print, **kw: groups.append(len(trials)) or real(trials, log, **kw))
    study = run_sweep(cfg, lambda run_id: tracker(), tracker, load_tokenizer(cfg.model.llm), log=lambda *_: None)
    assert groups == [4]  # the four grid points trained together, through one backbone pass per batch
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 4


def test_a_worker_leaving_early_ends_the_shared_parent_only_when_no_other_worker_runs(tiny_paths, tmp_path):
    """The study's one parent run is shared: a worker that stops on an error leaves it RUNNING while another
    worker has a trial running, and marks it FAILED (KILLED on Ctrl-C) when none has."""
    from vlmtrack.sweep.run import ending_parent

    cfg = sweep_cfg(tiny_paths, tmp_path)
    study = S.open_study(cfg)
    other = study.ask()  # a trial another worker is training
    other.set_user_attr(S.WORKER, "elsewhere:1")
    mine = study.ask()
    mine.set_user_attr(S.WORKER, S.worker_name())  # this worker's own running trial does not count
    parent = tracker()
    with pytest.raises(RuntimeError):
        with ending_parent(study, cfg, parent):
            raise RuntimeError("storage went away")
    assert parent.status == "RUNNING"
    S.tell(study, other, failed=True)
    for status, error in [("FAILED", RuntimeError("storage went away")), ("KILLED", KeyboardInterrupt())]:
        parent = tracker()
        with pytest.raises(type(error)):
            with ending_parent(study, cfg, parent):
                raise error
        assert parent.status == status
    parent = tracker()
    with ending_parent(study, cfg, parent):  # no error, but the grid is not complete: a re-run is due
        pass
    assert parent.status == "FAILED" and "re-run the sweep" in parent.events[-1]["error"]


def test_a_learning_curve_point_optuna_refuses_is_said_once_and_counted():
    from vlmtrack.sweep.run import reporter

    class Refusing:
        number, user_attrs = 3, {}

        def report(self, value, step):
            raise RuntimeError("database is locked")

        def set_user_attr(self, key, value):
            self.user_attrs[key] = value

    lines, trial = [], Refusing()
    report = reporter(trial, lines.append)
    report(1.0, 1)
    report(0.9, 2)  # the trial trains on
    assert lines == ["[sweep] warning: trial 3: Optuna did not take the quick-eval loss at step 1: "
                     "RuntimeError: database is locked"]
    assert trial.user_attrs == {"report_failures": 2}
