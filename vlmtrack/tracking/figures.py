"""Plots people would rather look at than read: eval loss by bucket over steps, ablation bars."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def eval_loss_by_bucket(evals: list[dict], buckets: list[str]):
    fig, ax = plt.subplots(figsize=(6, 4))
    steps = [e["step"] for e in evals]
    ax.plot(steps, [e["eval_loss"] for e in evals], "k-o", label="overall (token-weighted)")
    for b in buckets:
        if all(f"eval_loss_{b}" in e for e in evals):
            ax.plot(steps, [e[f"eval_loss_{b}"] for e in evals], "--o", label=b)
    ax.set_xlabel("step")
    ax.set_ylabel("eval loss (nats/token)")
    ax.set_title("Eval loss by caption-length bucket")
    ax.legend()
    fig.tight_layout()
    return fig


def ablation_bars(ablations: dict):
    modes = ["correct", "shuffled", "zero", "noise"]
    fig, ax = plt.subplots(figsize=(5, 4))
    values = [ablations[f"ablation_loss_{m}"] for m in modes]
    bars = ax.bar(modes, values, color=["tab:green", "tab:orange", "tab:gray", "tab:red"])
    for bar, v in zip(bars, values):
        ax.annotate(f"{v:.3f}", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom")
    ax.set_ylabel("loss (nats/token)")
    order = "holds" if ablations.get("ablation_order_ok") else "does not hold"
    ax.set_title(f"Vision ablations: correct<shuffled<zero<noise {order}")
    fig.tight_layout()
    return fig
