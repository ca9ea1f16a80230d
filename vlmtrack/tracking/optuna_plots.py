"""Optuna's own views of the finished grid (optuna.visualization.matplotlib), logged as figures on the
sweep's parent run. A plot that fails is a warning: the sweep's results matter more than its pictures."""
from __future__ import annotations

import sys
import warnings

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import optuna  # noqa: E402
from optuna.visualization import matplotlib as ov  # noqa: E402

from vlmtrack.config import SWEEP_AXES  # noqa: E402

AXIS_PARAMS = [axis.name for axis in SWEEP_AXES]  # the Optuna params the plots draw against
PLOTS = {  # artifact file -> how to draw it
    "sweep/optuna/optimization_history.png": lambda study: ov.plot_optimization_history(study),
    "sweep/optuna/slice.png": lambda study: ov.plot_slice(study, params=AXIS_PARAMS),
    f"sweep/optuna/contour_{'_'.join(AXIS_PARAMS)}.png": lambda study: ov.plot_contour(study, params=AXIS_PARAMS),
}


def log_study_plots(study: optuna.Study, tracker) -> list[str]:
    """Logs every plot it can draw; returns the artifact files logged."""
    logged = []
    for artifact_file, draw in PLOTS.items():
        try:
            with warnings.catch_warnings():
                # these plots are marked experimental; the warning says nothing about this grid
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                axes = draw(study)
            tracker.log_figure(np.ravel(axes)[0].figure, artifact_file)  # slice: one Axes per param
            logged.append(artifact_file)
        except Exception as e:  # noqa: BLE001 - never lose a finished sweep to a plot
            print(f"[sweep] warning: no {artifact_file}: {type(e).__name__}: {e}", file=sys.stderr)
    return logged
