"""Optuna's plots of a finished lr x vision_ln grid, as figures for the sweep's parent run; a plot that
fails is a warning and the others are still logged."""
import optuna
import pytest

from vlmtrack.tracking import optuna_plots

LRS, LNS = [1e-3, 3e-3], [False, True]


def score(lr, ln):
    return 2.0 + lr * 100 - 0.5 * ln  # best: lr=1e-3 with the LayerNorm -> 1.6


@pytest.fixture
def study():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = optuna.create_study(direction="minimize")
    for lr in LRS:
        for ln in LNS:
            s.enqueue_trial({"lr": lr, "vision_ln": ln})
            t = s.ask()
            s.tell(t, score(t.suggest_categorical("lr", LRS), t.suggest_categorical("vision_ln", LNS)))
    return s


class Figures:
    """Keeps what it is given, as a tracker's log_figure would upload it."""

    def __init__(self):
        self.figures = {}

    def log_figure(self, figure, artifact_file):
        self.figures[artifact_file] = figure


def test_history_slice_and_contour_of_the_grid(study):
    tracker = Figures()
    logged = optuna_plots.log_study_plots(study, tracker)
    assert logged == list(tracker.figures) == ["sweep/optuna/optimization_history.png", "sweep/optuna/slice.png",
                                               "sweep/optuna/contour_lr_vision_ln.png"]
    (history,) = tracker.figures["sweep/optuna/optimization_history.png"].axes
    best = next(line for line in history.get_lines() if line.get_label() == "Best Value")
    assert list(best.get_ydata())[-1] == pytest.approx(min(t.value for t in study.trials)) == pytest.approx(1.6)
    slices = tracker.figures["sweep/optuna/slice.png"].axes  # one per param, then the colour bar
    assert [ax.get_xlabel() for ax in slices[:2]] == ["lr", "vision_ln"]
    contour = tracker.figures["sweep/optuna/contour_lr_vision_ln.png"].axes[0]
    assert (contour.get_xlabel(), contour.get_ylabel()) == ("lr", "vision_ln")


def test_a_plot_that_fails_only_warns(study, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise ValueError("cannot draw this")

    monkeypatch.setattr(optuna_plots.ov, "plot_slice", broken)
    tracker = Figures()
    assert optuna_plots.log_study_plots(study, tracker) == ["sweep/optuna/optimization_history.png",
                                                            "sweep/optuna/contour_lr_vision_ln.png"]
    assert "[sweep] warning: no sweep/optuna/slice.png: ValueError: cannot draw this" in capsys.readouterr().err
