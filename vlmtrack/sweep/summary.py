"""The sweep's summary on the parent run: the spec's table (+ Δnoise and the mid-run loss) as an MLflow
table and CSV, a score chart, the winner, a winner_config.yaml for the scaled run, and every trial's
golden captions side by side."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from vlmtrack.config import SWEEP_AXES, Config, describe_point, dump_yaml, set_axes  # noqa: E402
from vlmtrack.data.golden import qual_files  # noqa: E402
from vlmtrack.sweep import study as S  # noqa: E402
from vlmtrack.tracking.sweep_table import axis_columns, axis_params, format_table  # noqa: E402


def summary_rows(study) -> list[dict]:
    """One row per grid point (its best COMPLETE trial), sorted by score."""
    best: dict[str, object] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        key = S.point_key(t.params)
        if key not in best or t.value < best[key].value:
            best[key] = t
    rows = []
    for t in best.values():
        a = t.user_attrs
        row = axis_columns(t.params)
        row.update({"eval_loss_end": a["eval_loss_end"], "Δshuffle": a["delta_shuffle"], "Δzero": a["delta_zero"],
                    "score": t.value, "Δnoise": a["delta_noise"]})
        row.update({k: v for k, v in a.items() if k.startswith("eval_loss_step")})
        row.update({"ablation_order_ok": bool(a["ablation_order_ok"]), "trial": t.number,
                    "mlflow_run_id": a.get("mlflow_run_id", ""), "output_dir": a.get("output_dir", "")})
        rows.append(row)
    return sorted(rows, key=lambda r: r["score"])


def point_label(row: dict, sep: str) -> str:
    """`lr=5e-05 ln=on`: a row's grid point under its score bar and over its golden captions column."""
    return sep.join(axis.chart_label(row[axis.label]) for axis in SWEEP_AXES)


def score_chart(rows: list[dict]):
    fig, ax = plt.subplots(figsize=(6, 4))
    labels = [point_label(r, "\n") for r in rows]
    bars = ax.bar(labels, [r["score"] for r in rows], color=["tab:green"] + ["tab:blue"] * (len(rows) - 1))
    for bar, r in zip(bars, rows):
        ax.annotate(f"{r['score']:.3f}", (bar.get_x() + bar.get_width() / 2, r["score"]), ha="center", va="bottom")
    ax.set_ylabel("score = eval_loss_end - 0.1·(Δshuffle + Δzero)")
    ax.set_title("Sweep scores (lower is better)")
    fig.tight_layout()
    return fig


def golden_side_by_side(rows: list[dict]) -> list[dict]:
    """Rows = golden items; one prediction column per trial (generic-caption collapse shows at a glance)."""
    table: dict[str, dict] = {}
    for r in rows:
        files = qual_files(Path(r["output_dir"]))
        if not files:
            continue
        column = point_label(r, " ")
        for line in files[-1].read_text().splitlines():
            rec = json.loads(line)
            item = table.setdefault(rec["id"], {"id": rec["id"], "image_relpath": rec["image_relpath"],
                                                "bucket": rec["bucket"], "gt_text": rec["gt_text"]})
            item[column] = rec["pred_text"]
    return list(table.values())


def write_summary(study, cfg: Config, parent, log=print, image_root: Path | None = None) -> list[dict]:
    rows = summary_rows(study)
    if not rows:
        log("[sweep] no completed trials: no summary")
        return rows
    out = S.sweep_dir(cfg)
    csv = out / "sweep_trial_summary.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    parent.log_table(rows, "sweep/summary.json")
    parent.log_artifact(csv, "sweep")
    parent.log_figure(score_chart(rows), "sweep/scores.png")
    win = rows[0]
    winner_cfg = copy.deepcopy(cfg)
    set_axes(winner_cfg, axis_params(win))
    winner_cfg.train.train_steps, winner_cfg.train.output_dir, winner_cfg.train.eval_at_steps = 0, "", []
    winner_cfg.train.run_name, winner_cfg.sweep.output_dir = "stage1_align_p11_winner", ""
    dump_yaml(winner_cfg, out / "winner_config.yaml")
    parent.log_artifact(out / "winner_config.yaml", "sweep")
    parent.log_params({f"winner.{name}": value for name, value in axis_params(win).items()})
    parent.set_tags({"winner_run_id": win["mlflow_run_id"], "winner_trial": win["trial"],
                     "winner_score": f"{win['score']:.4f}"})
    parent.log_metrics({"best_score": win["score"], "completed_trials": len(rows)}, 0)
    golden = golden_side_by_side(rows)
    if golden:
        root = image_root or Path(cfg.data.image_folder)
        parent.log_table(golden, "sweep/golden_side_by_side.json", image_root=root, image_column="image_relpath")
    log("[sweep] summary\n" + format_table(rows))
    log(f"[sweep] winner: {describe_point(axis_params(win))} (trial {win['trial']}, run {win['mlflow_run_id']})")
    return rows
