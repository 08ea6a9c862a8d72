"""Pictures of searches, logged as MLflow artifacts (PNG) that the MLflow UI shows (pictures of
single architectures are drawn by their spaces: ``raynas.spaces.drawing``).

- :func:`plot_arch_weights`: the softmax of the architecture weights over the epochs of a
  gradient search, one heatmap per weight matrix (rows: edge and operation; columns: epochs).
- :func:`plot_pareto`: candidates' accuracy against a cost (parameters, multiply-adds or
  latency), with the Pareto front (:func:`pareto_front`) drawn through the non-dominated ones;
  :func:`plot_pareto_panels`, several such panels side by side (one per kind of score).
- :func:`plot_cell_shapes`: the width and depth of a search's cells against random cells of the
  same space (Shu et al., ICLR 2020).

Figures are built with matplotlib's object-oriented API (no pyplot, no global backend change),
so drawing is safe in any process, with or without a display.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure


def _softmax(row: Sequence[float]) -> list[float]:
    top = max(row)
    exp = [math.exp(v - top) for v in row]
    total = sum(exp)
    return [e / total for e in exp]


def plot_arch_weights(
    history: Sequence[Mapping[str, Sequence[Sequence[float]]]],
    *,
    op_names: Sequence[str] | None = None,
    edge_names: Sequence[str] | None = None,
    title: str = "architecture weights (softmax per edge) over epochs",
) -> Figure:
    """Heatmaps of the architecture weights over epochs.

    The colour scale spans the weights shown (a short search moves them little from uniform:
    on a fixed 0-1 scale they would all look alike), and the colour bar says so.

    Args:
        history: One mapping per epoch, from a weight's name (``alpha_normal``, ...) to its raw
            matrix ``(edges, ops)`` (as ``EpochReport.arch_weights``).
        op_names: The operations' names, in column order (default ``op0``, ``op1``, ...).
        edge_names: The edges' names, in row order, for matrices with that many rows (e.g.
            ``node 0 → node 2``; default ``edge 0``, ``edge 1``, ...).
        title: The figure's title.

    Returns:
        A Figure with one heatmap per weight matrix: a row per (edge, op), a column per epoch,
        the colour the op's softmax weight on its edge at that epoch.
    """
    if not history:
        raise ValueError("plot_arch_weights needs the weights of at least one epoch")
    names = [n for n, m in history[-1].items() if m and isinstance(m[0], (list, tuple))]
    if not names:
        raise ValueError(f"no (edges, ops) matrices among the weights {sorted(history[-1])}")
    sizes = [len(history[-1][n]) * len(history[-1][n][0]) for n in names]
    fig = Figure(figsize=(max(5.0, 0.3 * len(history) + 5.5) * len(names), 1.5 + 0.16 * max(sizes)),
                 layout="constrained")
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    for ax, name in zip(axes, names, strict=True):
        edges, ops = len(history[-1][name]), len(history[-1][name][0])
        labels = list(op_names) if op_names and len(op_names) == ops else [f"op{i}" for i in range(ops)]
        edge_labels = (list(edge_names) if edge_names and len(edge_names) == edges
                       else [f"edge {e}" for e in range(edges)])
        grid = [[math.nan] * len(history) for _ in range(edges * ops)]  # (edges * ops, epochs)
        for t, weights in enumerate(history):
            for e, row in enumerate(weights.get(name, [])):
                for o, w in enumerate(_softmax(row)):
                    grid[e * ops + o][t] = w
        shown = [w for row in grid for w in row if not math.isnan(w)]
        low, high = min(shown), max(shown)
        if high - low < 1e-6:
            low, high = low - 0.01, high + 0.01
        image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=low, vmax=high, interpolation="nearest")
        ax.set_yticks(range(edges * ops))
        ax.set_yticklabels([f"{edge_labels[e]}: {labels[o]}" for e in range(edges) for o in range(ops)],
                           fontsize=6)
        for e in range(1, edges):
            ax.axhline(e * ops - 0.5, color="white", linewidth=0.8)
        ax.set_xticks(range(len(history)))
        ax.set_xticklabels([str(t) for t in range(len(history))], fontsize=6)
        ax.set_xlabel("epoch")
        ax.set_title(name, fontsize=10)
        bar = fig.colorbar(image, ax=ax, shrink=0.6)
        bar.set_label(f"softmax weight ({low:.3g} to {high:.3g})", fontsize=8)
    fig.suptitle(title, fontsize=11)
    return fig


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points when the cost (first) is minimised and the score
    (second) maximised, ordered by cost.

    A point is dominated when another has a cost no higher and a score no lower, and is strictly
    better in one of them. Of exact duplicates the first is kept.
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1], i))
    front: list[int] = []
    best = -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


@dataclass(frozen=True)
class ParetoPanel:
    """One panel of :func:`plot_pareto_panels`: candidates' scores (higher is better) against
    their costs, a label per candidate (its search or strategy) picking its colour."""

    costs: Sequence[float]
    scores: Sequence[float]
    score_label: str = "validation accuracy"
    groups: Sequence[str] | None = None
    title: str = "accuracy against cost"


def plot_pareto(
    costs: Sequence[float],
    scores: Sequence[float],
    *,
    cost_label: str = "parameters",
    score_label: str = "validation accuracy",
    groups: Sequence[str] | None = None,
    log_cost: bool = False,
    title: str = "accuracy against cost",
) -> Figure:
    """Scatter of every candidate with the Pareto front (lowest cost, highest score) drawn.

    Args:
        costs: Each candidate's cost (parameters, multiply-adds or latency).
        scores: Each candidate's score (higher is better).
        cost_label: The x axis's name.
        score_label: The y axis's name.
        groups: A label per candidate (search or strategy) that picks its colour.
        log_cost: Logarithmic cost axis.
        title: The figure's title.
    """
    return plot_pareto_panels([ParetoPanel(costs, scores, score_label, groups, title)],
                              cost_label=cost_label, log_cost=log_cost)


def plot_pareto_panels(panels: Sequence[ParetoPanel], *, cost_label: str = "parameters",
                       log_cost: bool = False) -> Figure:
    """:func:`plot_pareto`'s scatter and front for each of ``panels``, side by side, over one
    cost: scores of different kinds (an accuracy, a proxy's score) each on their own axes."""
    for panel in panels:
        if len(panel.costs) != len(panel.scores):
            raise ValueError(f"plot_pareto: {len(panel.costs)} costs but {len(panel.scores)} scores")
    fig = Figure(figsize=(6.4 * len(panels), 4.6), layout="constrained")
    for ax, panel in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
        costs, scores = panel.costs, panel.scores
        labels = list(panel.groups) if panel.groups is not None else [""] * len(costs)
        for group in dict.fromkeys(labels):
            xs = [c for c, g in zip(costs, labels, strict=True) if g == group]
            ys = [s for s, g in zip(scores, labels, strict=True) if g == group]
            ax.scatter(xs, ys, s=18, alpha=0.7, label=group or None)
        front = pareto_front(list(zip(costs, scores, strict=True)))
        if front:
            ax.step([costs[i] for i in front], [scores[i] for i in front], where="post", color="black",
                    linewidth=1.2, label="Pareto front")
            ax.scatter([costs[i] for i in front], [scores[i] for i in front], s=40, facecolors="none",
                       edgecolors="black")
        if log_cost:
            ax.set_xscale("log")
        ax.set_xlabel(cost_label)
        ax.set_ylabel(panel.score_label)
        ax.grid(alpha=0.3)
        if panel.groups is not None or front:
            ax.legend(fontsize=8)
        ax.set_title(panel.title, fontsize=11)
    return fig


def plot_cell_shapes(
    found: Mapping[str, Sequence[tuple[float, float]]],
    random: Mapping[str, Sequence[tuple[float, float]]],
    *,
    result: Mapping[str, tuple[float, float]] | None = None,
    title: str = "cell width and depth: the search's cells against random cells",
) -> Figure:
    """Per cell type (``normal``, ``reduce``), the (width, depth) of the search's cells against
    those of random cells of its space: how often each shape occurs, as circles whose area grows
    with the count (random cells grey, the search's blue), the result's cell as a red star.

    Args:
        found: Per cell type, the (width, depth) of every candidate the search evaluated.
        random: Per cell type, the (width, depth) of random cells of the same space.
        result: Per cell type, the (width, depth) of the search's result.
        title: The figure's title.
    """
    from collections import Counter

    kinds = list(dict.fromkeys([*found, *random]))
    fig = Figure(figsize=(5.2 * max(1, len(kinds)), 4.4), layout="constrained")
    axes = fig.subplots(1, max(1, len(kinds)), squeeze=False)[0]
    for ax, kind in zip(axes, kinds, strict=False):
        for points, colour, label in ((random.get(kind, ()), "#999999", "random cells"),
                                      (found.get(kind, ()), "#0072B2", "the search's cells")):
            counts = Counter(points)
            total = max(1, len(points))
            if counts:
                ax.scatter([w for w, _ in counts], [d for _, d in counts], color=colour, alpha=0.5,
                           s=[20 + 600 * c / total for c in counts.values()],
                           label=f"{label} ({len(points)})")
        if result and kind in result:
            ax.scatter([result[kind][0]], [result[kind][1]], marker="*", s=220, color="#D55E00",
                       edgecolors="black", label="result", zorder=5)
        ax.set_xlabel("width (in units of one node's channels)")
        ax.set_ylabel("depth (connections, input to output)")
        ax.set_title(f"{kind} cell", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    return fig


def save_figure(fig: Figure, path: str | Path, *, dpi: int = 110) -> Path:
    """Write ``fig`` as PNG (or the format of the suffix) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path
