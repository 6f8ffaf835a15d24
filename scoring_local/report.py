"""What the scorer writes: scores.txt, learning-curve-<task>.png and detailed_results.html."""
from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from scoring_local.metrics import T0, transform_time


def _atomic_write(path: Path, data: bytes | str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(temporary, path)


def write_scores_txt(path: Path, score: float, timestamps: Sequence[float],
                     nauc_scores: Sequence[float], accuracies: Sequence[float] | None) -> None:
    lines = [f"score: {score}",
             f"Duration: {timestamps[-1] if timestamps else 0}",
             f"timestamps: {[float(t) for t in timestamps]}",
             f"nauc_scores: {[float(s) for s in nauc_scores]}"]
    if accuracies is not None:
        lines.append(f"accuracy: {[float(a) for a in accuracies]}")
    _atomic_write(path, "\n".join(lines) + "\n")


def plot_learning_curve(path: Path, task: str, timestamps: Sequence[float],
                        scores: Sequence[float], time_budget: float, alc: float,
                        t0: float = T0) -> None:
    """The platform's learning-curve figure: step curve in transformed time, area filled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kept = [(t, s) for t, s in zip(timestamps, scores) if t <= time_budget]
    x = [0.0] + [float(transform_time(t, time_budget, t0)) for t, _ in kept]
    y = [0.0] + [s for _, s in kept]
    figure, axis = plt.subplots(figsize=(7, 7.07))
    axis.plot(x, y, drawstyle="steps-post", marker="o", markersize=3, label=f"ALC={alc:.4f}")
    axis.fill_between(x + [1.0], y + [y[-1]], step="post", alpha=0.5, color="cyan")
    if len(x) > 1:
        axis.plot([x[-1], 1.0], [y[-1], y[-1]], linestyle="--", color="tab:blue")
        axis.text(x[-1], y[-1] + 0.01, f"{y[-1]:.4f}")
    axis.set_title(f"Learning curve for task: {task}")
    axis.set_xlabel(f"Transformed time: $\\tilde{{t}} = \\frac{{\\log (1 + t / t_0)}}"
                    f"{{ \\log (1 + T / t_0) }}$ (T = {int(time_budget)}, t0 = {int(t0)})")
    axis.set_ylabel("score (2 * AUC - 1)")
    axis.set_xlim(0, 1)
    axis.set_ylim(-0.01, 1)
    axis.grid(True, zorder=5)
    axis.legend(loc="best")
    seconds = [t for t in [10, 60, 300, 600, 1200, *range(1800, int(time_budget) + 1, 1800)]
               if t <= time_budget]
    top = axis.twiny()
    top.set_xlim(0, 1)
    top.set_xticks(transform_time(np.array(seconds), time_budget, t0))
    top.set_xticklabels([str(t) for t in seconds])
    top.set_xlabel("Real time (s)")
    temporary = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(temporary)
    plt.close(figure)
    os.replace(temporary, path)


def write_detailed_results(score_dir: Path, auto_refresh: bool) -> None:
    """detailed_results.html embedding every PNG of the score dir, as the platform does."""
    refresh = '<meta http-equiv="refresh" content="5">' if auto_refresh else ""
    images = "".join(
        f'<img src="data:image/png;charset=utf-8;base64,'
        f'{base64.b64encode(png.read_bytes()).decode()}"/><br>'
        for png in sorted(score_dir.glob("*.png")))
    if not images:
        images = ("Starting training process... Please be patient. Learning curves will be "
                  "generated when first predictions are made.")
    _atomic_write(score_dir / "detailed_results.html",
                  f"<html><head>{refresh}</head><body><pre>{images}</pre></body></html>")
