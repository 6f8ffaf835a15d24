"""Plots and a markdown summary of the offline pipeline: BOHB, cross-evaluation and selector.

    python -m offline report --budget 180 --out reports/

Reads the result store and the selector's report beside it
(`<store folder>/selector/selector_report.json`, written by `python -m offline selector`) and
writes into `--out`:

- fig3_accuracy_by_dataset.png, fig4_accuracy_by_model.png: the final accuracy of each BOHB
  incumbent, grouped by dataset and by backbone (the paper's Fig. 3 and 4);
- crosseval_alc.png: the cross-evaluation ALC matrix at `--budget`, its diagonal framed;
- fig5_selector_alc.png: per held-out dataset, the ALC of the selected config over the
  meta-test batch size for each meta-classifier, against the same-config oracle, the
  generalist, the default config and every other dataset's config (the paper's Fig. 5);
- selector_accuracy.png: the identification accuracy over the batch size per meta-classifier;
- summary.md: the scale, the tables behind the plots, and the plots.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import cycle
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from autodl_meta.fingerprint import FINGERPRINT_BATCH
from offline.cli import add_budget_argument, command_parser, setup_logging
from offline.crosseval import GENERALIST_NAME, candidate_configs, markdown_matrix
from offline.selector import REPORT_FILE, HeldOut
from offline.store import DEFAULT_STORE, REPO_ROOT, Incumbent, ResultStore, alc_matrix
from offline.tables import markdown_table

logger = logging.getLogger(__name__)

DEFAULT_OUT = REPO_ROOT / "reports"
FIG3 = "fig3_accuracy_by_dataset.png"
FIG4 = "fig4_accuracy_by_model.png"
CROSSEVAL = "crosseval_alc.png"
FIG5 = "fig5_selector_alc.png"
IDENTIFICATION = "selector_accuracy.png"
SUMMARY = "summary.md"
CONFIG_FIELDS = ("optimizer", "batch_size", "learning_rate", "dropout", "resolution",
                 "augmentation")
# Green, red, black and grey are taken by the reference lines of Fig. 5.
KIND_COLOURS = ("tab:blue", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:cyan",
                "tab:olive")
PANEL_COLUMNS = 4


@dataclass
class SelectorReport:
    """The selector's JSON report, with the batch sizes turned back into ints."""

    datasets: list[str]
    budget: float
    seed: int
    batch_sizes: list[int]
    repeats: int
    max_samples: int
    chosen_kind: str
    min_confidence: float
    accuracy: dict[str, dict[int, float]]   # kind -> batch size -> identification accuracy
    held_out: list[HeldOut]

    @property
    def kinds(self) -> list[str]:
        return list(self.accuracy)


@dataclass
class ReportData:
    """Everything the plots and the summary show, read from the store and the selector."""

    incumbents: list[Incumbent]
    accuracies: dict[tuple[str, str], float]   # (dataset, backbone) -> final accuracy
    names: list[str]                           # cross-evaluation rows: the configs
    datasets: list[str]                        # cross-evaluation columns
    budget: float
    seeds: list[int]
    matrix: np.ndarray                         # ALC, names x datasets, at `budget`
    others: dict[str, list[float]]             # held-out dataset -> other configs' ALC on it
    selector: SelectorReport


def held_out_from_dict(values: dict[str, Any]) -> HeldOut:
    """A HeldOut from its JSON form, whose batch-size keys JSON has made strings."""
    selections = {kind: {int(size): [(name, float(confidence), float(alc))
                                     for name, confidence, alc in picks]
                         for size, picks in by_size.items()}
                  for kind, by_size in values["selections"].items()}
    return HeldOut(values["dataset"], float(values["oracle"]), float(values["generalist"]),
                   float(values["default"]), selections)


def load_selector_report(path: Path) -> SelectorReport:
    """The JSON report `python -m offline selector` writes."""
    values = json.loads(path.read_text())
    accuracy = {kind: {int(size): float(value) for size, value in by_size.items()}
                for kind, by_size in values["identification_accuracy"].items()}
    return SelectorReport(values["datasets"], float(values["budget"]), int(values["seed"]),
                          [int(size) for size in values["batch_sizes"]], int(values["repeats"]),
                          int(values["max_samples"]), values["chosen_kind"],
                          float(values["min_confidence"]), accuracy,
                          [held_out_from_dict(held) for held in values["held_out"]])


def incumbent_accuracy(store: ResultStore, incumbent: Incumbent) -> float:
    """Final accuracy of BOHB's best run: the incumbent's config on its dataset at its budget.

    Looked up by config, not taken as the dataset's best row, because the cross-evaluation
    puts other datasets' configs beside BOHB's own trials. NaN when the run is not stored.
    """
    runs = [evaluation for config, evaluation in store.evaluations(incumbent.dataset)
            if config == incumbent.config and evaluation.budget == incumbent.budget]
    return max(runs, key=lambda run: run.alc).final_accuracy if runs else math.nan


def other_configs_alc(names: Sequence[str], datasets: Sequence[str], matrix: np.ndarray
                      ) -> dict[str, list[float]]:
    """Per dataset, the ALC of every other dataset's incumbent on it: Fig. 5's thin lines."""
    return {held: [float(matrix[i, j]) for i, name in enumerate(names)
                   if name not in (held, GENERALIST_NAME) and np.isfinite(matrix[i, j])]
            for j, held in enumerate(datasets)}


def collect(store: ResultStore, selector: SelectorReport, budget: float, seeds: Sequence[int]
            ) -> ReportData:
    """What the plots and the summary show; the matrix at `budget` averaged over `seeds`."""
    incumbents = store.incumbents()
    configs = candidate_configs(store)
    names, datasets = list(configs), sorted(store.best_incumbents())
    matrix = alc_matrix(store, configs, datasets, budget, seeds)
    missing = int(np.isnan(matrix).sum())
    if missing:
        logger.warning("%d of %d cross-evaluation cells missing at %g s: run python -m offline "
                       "crosseval --budget %g", missing, matrix.size, budget, budget)
    # Fig. 5 prices with the matrix the selector priced its selections with.
    priced = alc_matrix(store, configs, selector.datasets, selector.budget, (selector.seed,))
    accuracies = {(incumbent.dataset, incumbent.backbone): incumbent_accuracy(store, incumbent)
                  for incumbent in incumbents}
    return ReportData(incumbents, accuracies, names, datasets, budget, list(seeds), matrix,
                      other_configs_alc(names, selector.datasets, priced), selector)


def new_figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas: no pyplot, so no global backend and no figure registry
    that keeps every plot alive."""
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save(figure: Figure, path: Path) -> None:
    figure.savefig(path, dpi=120)
    logger.info("wrote %s", path)


def palette(count: int) -> list[tuple[float, float, float, float]]:
    """`count` distinct colours: tab10, or tab20 beyond ten."""
    colours = colormaps["tab10" if count <= 10 else "tab20"]
    return [colours(i % colours.N) for i in range(count)]


def plot_grouped_bars(values: dict[tuple[str, str], float], title: str, member_title: str,
                      path: Path) -> None:
    """values[(group, member)] as bars: one cluster per group, one colour per member."""
    present = {key: value for key, value in values.items() if np.isfinite(value)}
    groups = sorted({group for group, _ in present})
    members = sorted({member for _, member in present})
    figure = new_figure(min(20.0, max(6.0, 3.0 + 0.4 * len(present))), 4.5)
    ax = figure.add_subplot()
    width = 0.8 / max(1, len(members))
    for k, (member, colour) in enumerate(zip(members, palette(len(members)))):
        shown = [(g, group) for g, group in enumerate(groups) if (group, member) in present]
        x = [g + (k - (len(members) - 1) / 2) * width for g, _ in shown]
        heights = [present[group, member] for _, group in shown]
        bars = ax.bar(x, heights, width, label=member, color=colour)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(range(len(groups)), groups, rotation=30, ha="right")
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("final accuracy of the BOHB incumbent")
    ax.set_title(title)
    ax.legend(title=member_title, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    save(figure, path)


def plot_accuracy_figures(data: ReportData, out: Path) -> None:
    """The paper's Fig. 3 (by dataset) and Fig. 4 (by model) from the same accuracies."""
    plot_grouped_bars(data.accuracies, "Final accuracy per dataset", "backbone", out / FIG3)
    by_model = {(backbone, dataset): value
                for (dataset, backbone), value in data.accuracies.items()}
    plot_grouped_bars(by_model, "Final accuracy per backbone", "dataset", out / FIG4)


def plot_crosseval(data: ReportData, path: Path) -> None:
    """The ALC matrix as a heatmap, values written in, each dataset's own config framed."""
    matrix = data.matrix
    figure = new_figure(3.5 + 1.0 * len(data.datasets), 1.8 + 0.5 * len(data.names))
    ax = figure.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap="viridis", aspect="auto")
    ax.set_facecolor("lightgrey")  # what shows through the cells not evaluated yet
    figure.colorbar(image, ax=ax, label=f"ALC at {data.budget:g} s")
    for (i, j), value in np.ndenumerate(matrix):
        # viridis is dark at its low end: white text there, black above the middle.
        dark = np.isfinite(value) and image.norm(value) < 0.5
        ax.text(j, i, f"{value:.3f}" if np.isfinite(value) else "-", ha="center",
                va="center", fontsize=8, color="white" if dark else "black")
    for i, name in enumerate(data.names):
        if name in data.datasets:
            # Inset a little, so that neighbouring frames and the axes' edge cut none of them.
            ax.add_patch(Rectangle((data.datasets.index(name) - 0.45, i - 0.45), 0.9, 0.9,
                                   fill=False, edgecolor="red", linewidth=2.5))
    ax.set_xticks(range(len(data.datasets)), data.datasets, rotation=30, ha="right")
    ax.set_yticks(range(len(data.names)), data.names)
    ax.set_xlabel("evaluated on")
    ax.set_ylabel("incumbent config of")
    ax.set_title("Cross-evaluation (framed: the dataset's own config)")
    save(figure, path)


def plot_held_out_panel(ax: Axes, held: HeldOut, kinds: Sequence[str], sizes: Sequence[int],
                        others: Sequence[float]) -> None:
    """One panel of Fig. 5: the kinds' selections over the batch size, and reference lines."""
    for k, value in enumerate(others):
        ax.axhline(value, color="tab:green", linewidth=0.7, alpha=0.7,
                   label="other datasets' configs" if k == 0 else "_nolegend_")
    ax.axhline(held.oracle, color="black", linewidth=2, label="same-config (oracle)")
    ax.axhline(held.generalist, color="tab:red", linewidth=2, linestyle="--",
               label="generalist (best on the others)")
    ax.axhline(held.default, color="tab:grey", linewidth=2, linestyle=":",
               label="default config")
    for kind, colour in zip(kinds, cycle(KIND_COLOURS)):
        ax.plot(sizes, [held.selected_alc(kind, size) for size in sizes], marker="o",
                markersize=3, color=colour, label=kind)
    # The batch size the runtime fingerprints: where the selection counts.
    ax.axvline(FINGERPRINT_BATCH, color="lightgrey", linewidth=1, zorder=0)
    ax.set_xscale("log", base=2)
    ticks = list(sizes)[::2]
    ax.set_xticks(ticks, [str(size) for size in ticks])
    ax.set_title(held.dataset, fontsize=10)


def plot_selector_alc(data: ReportData, path: Path) -> None:
    """The paper's Fig. 5: one panel per held-out dataset, one legend for all."""
    selector = data.selector
    count = len(selector.held_out)
    columns = min(PANEL_COLUMNS, count)
    rows = math.ceil(count / columns)
    figure = new_figure(3.2 * columns + 0.5, 2.6 * rows + 1.0)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, held in zip(axes, selector.held_out):
        plot_held_out_panel(ax, held, selector.kinds, selector.batch_sizes,
                            data.others[held.dataset])
    for ax in axes[count:]:
        ax.set_visible(False)
    for ax in axes[::columns]:
        ax.set_ylabel("ALC")
    for ax in axes[(rows - 1) * columns:]:
        ax.set_xlabel("meta-test batch size")
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=min(4, len(labels)),
                  fontsize=8)
    figure.suptitle(f"Leave-one-dataset-out: ALC of the selected config "
                    f"(budget {selector.budget:g} s)")
    save(figure, path)


def plot_identification(selector: SelectorReport, path: Path) -> None:
    figure = new_figure(6.0, 4.0)
    ax = figure.add_subplot()
    sizes = selector.batch_sizes
    for kind, colour in zip(selector.kinds, cycle(KIND_COLOURS)):
        ax.plot(sizes, [selector.accuracy[kind][size] for size in sizes], marker="o",
                color=colour, label=kind)
    # Guessing among the known datasets: what a useless meta-classifier scores.
    ax.axhline(1 / len(selector.datasets), color="tab:grey", linestyle=":", label="chance")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(size) for size in sizes])
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("meta-test batch size")
    ax.set_ylabel("identification accuracy")
    ax.set_title(f"Which of {len(selector.datasets)} datasets is this batch from?")
    ax.legend(fontsize=8)
    save(figure, path)


def number(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if np.isfinite(value) else "-"


def scale_section(data: ReportData) -> str:
    selector = data.selector
    trials = [incumbent.trials for incumbent in data.incumbents]
    backbones = sorted({incumbent.backbone for incumbent in data.incumbents})
    return "\n".join([
        f"- datasets ({len(data.datasets)}): {', '.join(data.datasets)}",
        f"- backbones ({len(backbones)}): {', '.join(backbones)}",
        f"- BOHB: {min(trials)}-{max(trials)} trials per (dataset, backbone), {sum(trials)} in "
        f"all; incumbents at {', '.join(sorted({f'{i.budget:g}' for i in data.incumbents}))} s",
        f"- cross-evaluation: budget {data.budget:g} s, seeds "
        f"{', '.join(map(str, data.seeds))}",
        f"- selector: budget {selector.budget:g} s, seed {selector.seed}, batch sizes "
        f"{min(selector.batch_sizes)}-{max(selector.batch_sizes)}, {selector.repeats} batches "
        f"per dataset and size, {selector.max_samples} fingerprinted examples per split"])


def field_text(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def incumbents_table(data: ReportData) -> str:
    rows = [[incumbent.dataset, incumbent.backbone, number(incumbent.alc),
             number(data.accuracies[incumbent.dataset, incumbent.backbone]),
             f"{incumbent.budget:g}", str(incumbent.trials),
             *(field_text(getattr(incumbent.config, name)) for name in CONFIG_FIELDS)]
            for incumbent in data.incumbents]
    return markdown_table(["dataset", "backbone", "ALC", "final accuracy", "budget (s)",
                           "trials", *CONFIG_FIELDS], rows)


def identification_table(selector: SelectorReport) -> str:
    rows = [[kind, *(number(selector.accuracy[kind][size], 2) for size in selector.batch_sizes)]
            for kind in selector.kinds]
    return markdown_table(["kind \\ batch size", *map(str, selector.batch_sizes)], rows)


def held_out_table(selector: SelectorReport, size: int = FINGERPRINT_BATCH) -> str:
    """Mean ALC per held-out dataset at one batch size, and the mean over them."""
    kind, threshold = selector.chosen_kind, selector.min_confidence
    columns: dict[str, Callable[[HeldOut], float]] = {
        "oracle": lambda held: held.oracle,
        "generalist": lambda held: held.generalist,
        "default": lambda held: held.default,
        **{name: (lambda held, name=name: held.selected_alc(name, size))
           for name in selector.kinds},
        f"chosen: {kind}, confidence >= {threshold:g}":
            lambda held: held.selected_alc(kind, size, threshold)}
    values = np.array([[column(held) for column in columns.values()]
                       for held in selector.held_out])
    rows = [[held.dataset, *map(number, row)] for held, row in zip(selector.held_out, values)]
    rows.append(["**mean**", *map(number, values.mean(axis=0))])
    return markdown_table(["held-out dataset", *columns], rows)


def summary(data: ReportData) -> str:
    selector = data.selector
    return "\n\n".join([
        "# Offline meta-learning report",
        "## Scale", scale_section(data),
        "## BOHB incumbents", incumbents_table(data),
        f"![final accuracy by dataset]({FIG3})", f"![final accuracy by backbone]({FIG4})",
        f"## Cross-evaluation ALC at {data.budget:g} s",
        markdown_matrix(data.names, data.datasets, data.matrix),
        f"![cross-evaluation]({CROSSEVAL})",
        "## Identification accuracy", identification_table(selector),
        f"![identification accuracy]({IDENTIFICATION})",
        f"## Leave-one-dataset-out at batch size {FINGERPRINT_BATCH}",
        f"Mean ALC of the selected config. Chosen: `{selector.chosen_kind}` with "
        f"min_confidence {selector.min_confidence:g} (below it the generalist's config runs).",
        held_out_table(selector),
        f"![selector ALC]({FIG5})"]) + "\n"


def write_report(data: ReportData, out: Path) -> Path:
    """All plots and summary.md into `out`; returns the summary's path."""
    out.mkdir(parents=True, exist_ok=True)
    plot_accuracy_figures(data, out)
    plot_crosseval(data, out / CROSSEVAL)
    plot_selector_alc(data, out / FIG5)
    plot_identification(data.selector, out / IDENTIFICATION)
    path = out / SUMMARY
    path.write_text(summary(data))
    logger.info("wrote %s", path)
    return path


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments (tests parse the README's command lines with it)."""
    parser = command_parser("python -m offline report", __doc__)
    parser.add_argument("--store", type=Path, default=DEFAULT_STORE,
                        help="the result store")
    add_budget_argument(parser, "budget of the cross-evaluation matrix")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="seeds the cross-evaluation ALCs are averaged over "
                             "(default: %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="folder for the plots and summary.md")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging()
    report_path = args.store.parent / "selector" / REPORT_FILE
    # Checked before opening: ResultStore would create an empty store where none is.
    if not args.store.is_file():
        logger.error("no result store at %s: run python -m offline bohb first", args.store)
        return 1
    with ResultStore(args.store) as store:
        if not store.incumbents():
            logger.error("%s holds no incumbent: run python -m offline bohb first", args.store)
            return 1
        if not report_path.is_file():
            logger.error("no selector report at %s: run python -m offline selector --store %s "
                         "first", report_path, args.store)
            return 1
        data = collect(store, load_selector_report(report_path), args.budget, args.seeds)
    path = write_report(data, args.out)
    print(f"wrote {path} and its plots in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
