"""The sweep summary table's columns and its text form. Here, not in sweep/, because the report reads the
table back from MLflow and tracking never imports sweep."""
from __future__ import annotations

from vlmtrack.config import SWEEP_AXES

AXIS_MIN_WIDTH = 8  # a rate written with :g ("5e-05", "0.0001") fits without shifting the columns


def axis_columns(params: dict) -> dict:
    """A grid point (Optuna params) as the table's leading columns, keyed by axis label."""
    return {axis.label: axis.type(params[axis.name]) for axis in SWEEP_AXES}


def axis_params(row: dict) -> dict:
    """A table row's grid point, keyed by Optuna param name (what set_axes and log lines take)."""
    return {axis.name: row[axis.label] for axis in SWEEP_AXES}


def format_table(rows: list[dict]) -> str:
    widths = [max(AXIS_MIN_WIDTH, len(axis.label)) for axis in SWEEP_AXES]
    header = "".join(f"{axis.label:<{w}} | " for axis, w in zip(SWEEP_AXES, widths))
    lines = [header + "eval_loss_end | Δshuffle | Δzero  | score"]
    for r in rows:
        axes = "".join(f"{axis.shown(r[axis.label]):<{w}} | " for axis, w in zip(SWEEP_AXES, widths))
        lines.append(axes + f"{r['eval_loss_end']:<13.4f} | {r['Δshuffle']:<8.4f} | {r['Δzero']:<6.4f} | "
                     f"{r['score']:.4f}")
    return "\n".join(lines)
