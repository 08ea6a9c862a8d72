"""Pictures of searches, logged as MLflow artifacts (PNG) that the MLflow UI shows.

- :func:`draw_architecture`: a DARTS genotype as its normal and reduction cells, drawn as in
  Figures 4 and 5 of Liu et al., "DARTS: Differentiable Architecture Search" (ICLR 2019): the
  cell inputs ``c_{k-2}``, ``c_{k-1}``, the intermediate nodes, the output ``c_{k}`` and each
  chosen edge labelled with its operation; a NAS-Bench-201 cell (Dong & Yang, ICLR 2020, Fig. 1)
  as its four nodes and six labelled edges (``none`` edges left out); an FBNet architecture
  (Wu et al., CVPR 2019, Fig. 6) as its chain of per-layer blocks, coloured by kernel size and
  sized by expansion; a DARTS recurrent cell (Liu et al., Fig. 6) as its nodes and activations;
  Auto-DeepLab's cell and its network-level path over the downsampling rates (Liu et al., CVPR
  2019, Fig. 1 and 3).
- :func:`plot_arch_weights`: the softmax of the architecture weights over the epochs of a
  gradient search, one heatmap per weight matrix (rows: edge and operation; columns: epochs).
- :func:`plot_pareto`: candidates' accuracy against a cost (parameters, multiply-adds or
  latency), with the Pareto front (:func:`pareto_front`) drawn through the non-dominated ones.

Figures are built with matplotlib's object-oriented API (no pyplot, no global backend change),
so drawing is safe in any process, with or without a display.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from raynas.types import Architecture

# Operation colours shared by every drawing (a colour-blind-safe palette; unknown ops are grey).
OP_COLORS: dict[str, str] = {
    "max_pool_3x3": "#0072B2", "avg_pool_3x3": "#56B4E9", "skip_connect": "#009E73",
    "sep_conv_3x3": "#D55E00", "sep_conv_5x5": "#E69F00", "sep_conv_7x7": "#F0E442",
    "dil_conv_3x3": "#CC79A7", "dil_conv_5x5": "#882255", "conv_7x1_1x7": "#44AA99",
    "nor_conv_1x1": "#E69F00", "nor_conv_3x3": "#D55E00", "none": "#BBBBBB",
}


def _op_color(op: str) -> str:
    return OP_COLORS.get(op, "#555555")


def _box(ax: Any, xy: tuple[float, float], text: str, color: str, *, width: float = 0.9) -> None:
    x, y = xy
    ax.add_patch(FancyBboxPatch(
        (x - width / 2, y - 0.22), width, 0.44, boxstyle="round,pad=0.04", facecolor=color,
        edgecolor="black", linewidth=1.0, zorder=3,
    ))
    ax.text(x, y, text, ha="center", va="center", fontsize=10, zorder=4)


def _edge(ax: Any, start: tuple[float, float], end: tuple[float, float], label: str | None,
          color: str, *, rad: float = 0.0) -> None:
    ax.add_patch(FancyArrowPatch(
        start, end, arrowstyle="-|>", mutation_scale=14, color=color, linewidth=1.6,
        connectionstyle=f"arc3,rad={rad}", shrinkA=18, shrinkB=18, zorder=2,
    ))
    if label:
        # The label sits on the arc's midpoint (arc3 bends by rad times the chord's length).
        mx, my = (start[0] + end[0]) / 2, (start[1] + end[1]) / 2
        dx, dy = end[0] - start[0], end[1] - start[1]
        mx, my = mx + rad * dy / 2, my - rad * dx / 2
        frame = {"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": color, "linewidth": 0.8}
        ax.text(mx, my, label, ha="center", va="center", fontsize=7, color="black", zorder=5, bbox=frame)


def _finish(ax: Any, title: str, xlim: tuple[float, float], ylim: tuple[float, float]) -> None:
    ax.set_title(title, fontsize=12)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_aspect("equal")
    ax.axis("off")


def draw_darts_cell(
    ax: Any, edges: Sequence[tuple[str, int]], concat: Sequence[int], title: str,
    names: tuple[str, str, str] = ("c_{k-2}", "c_{k-1}", "c_{k}"),
) -> None:
    """Draw one DARTS cell on ``ax``.

    Args:
        ax: A matplotlib Axes.
        edges: Two (op, input) pairs per intermediate node; input 0 and 1 are ``c_{k-2}`` and
            ``c_{k-1}``, input ``2 + i`` is intermediate node ``i``.
        concat: The states concatenated into the output.
        title: The panel's title.
        names: The two inputs' and the output's labels (Auto-DeepLab: H^{l-2}, H^{l-1}, H^{l}).
    """
    nodes = len(edges) // 2
    pos: dict[int, tuple[float, float]] = {0: (0.0, 2.0), 1: (0.0, -2.0)}
    for i in range(nodes):  # intermediate nodes on a zig-zag so that edges between them stay apart
        pos[2 + i] = (3.0 * (i + 1), 1.3 if i % 2 == 0 else -1.3)
    out = (3.0 * (nodes + 1), 0.0)
    _box(ax, pos[0], names[0], "#A6D96A", width=1.2)
    _box(ax, pos[1], names[1], "#A6D96A", width=1.2)
    for i in range(nodes):
        _box(ax, pos[2 + i], str(i), "#ABD9E9", width=0.6)
    _box(ax, out, names[2], "#FEE08B", width=1.0)
    for j, (op, src) in enumerate(edges):
        dst = 2 + j // 2
        rad = 0.25 if j % 2 == 0 else -0.25
        _edge(ax, pos[src], pos[dst], op, _op_color(op), rad=rad if src >= 2 or nodes > 1 else 0.0)
    for state in concat:
        _edge(ax, pos[state], out, None, "#999999", rad=0.0)
    _finish(ax, title, (-0.9, out[0] + 0.8), (-2.9, 2.9))


def draw_rnn_cell(ax: Any, recurrent: Sequence[tuple[str, int]], concat: Sequence[int], title: str) -> None:
    """Draw a DARTS recurrent cell: ``x_t, h_{t-1}`` into state 0, node ``i`` (1..n) from its one
    predecessor through its activation, and ``h_t`` the mean of the ``concat`` states."""
    nodes = len(recurrent)
    pos: dict[int, tuple[float, float]] = {-1: (0.0, 0.0), 0: (2.6, 0.0)}
    for i in range(1, nodes + 1):  # a zig-zag, so that arcs between far nodes stay apart
        pos[i] = (2.6 + 2.2 * i, 1.3 if i % 2 else -1.3)
    out = (2.6 + 2.2 * (nodes + 1), 0.0)
    _box(ax, pos[-1], "x_t, h_{t-1}", "#A6D96A", width=1.6)
    for i in range(nodes + 1):
        _box(ax, pos[i], str(i), "#ABD9E9", width=0.6)
    _box(ax, out, "h_t", "#FEE08B", width=0.8)
    _edge(ax, pos[-1], pos[0], None, "#999999", rad=0.0)
    for i, (activation, src) in enumerate(recurrent, start=1):
        _edge(ax, pos[src], pos[i], activation, _op_color(activation), rad=0.0 if i - src == 1 else 0.3)
    for state in concat:
        _edge(ax, pos[state], out, None, "#999999", rad=0.0)
    _finish(ax, title, (-1.2, out[0] + 0.8), (-2.4, 2.4))


def draw_network_path(ax: Any, path: Sequence[int], title: str) -> None:
    """Draw Auto-DeepLab's network-level path: the downsampling rate (4, 8, 16, 32) of every layer."""
    rates = [4 * 2**level for level in path]
    ax.plot(range(1, len(path) + 1), rates, marker="o", color="#2C7BB6")
    ax.set_yscale("log", base=2)
    ax.set_yticks([4, 8, 16, 32], labels=["/4", "/8", "/16", "/32"])
    ax.set_ylim(45, 3)  # coarser resolutions lower down, as in the paper's figure
    ax.set_xticks(range(1, len(path) + 1))
    ax.set_xlabel("layer")
    ax.set_title(title, fontsize=10)


def draw_nb201_cell(ax: Any, edges: Sequence[tuple[str, int, int]], title: str) -> None:
    """Draw a NAS-Bench-201 cell: nodes 0..3 on a line, each (op, from, to) edge an arc above or
    below it; ``none`` edges (which carry nothing) are left out."""
    pos = {n: (2.4 * n, 0.0) for n in range(4)}
    for n, xy in pos.items():
        _box(ax, xy, str(n), "#A6D96A" if n == 0 else "#FEE08B" if n == 3 else "#ABD9E9", width=0.6)
    for op, src, dst in edges:
        if op == "none":
            continue
        span = dst - src
        rad = 0.0 if span == 1 else (-0.35 if (src + dst) % 2 else 0.35) / (span - 0.5)
        _edge(ax, pos[src], pos[dst], op, _op_color(op), rad=rad)
    _finish(ax, title, (-0.6, 7.8), (-1.6, 1.6))


def draw_fbnet_blocks(ax: Any, blocks: Sequence[str], title: str) -> None:
    """Draw an FBNet architecture: one bar per searchable layer, coloured by kernel size (3: blue,
    5: orange, skip: grey), its height the expansion ratio, hatched for grouped 1x1 convs."""
    colors = {"3": "#0072B2", "5": "#E69F00"}
    for i, block in enumerate(blocks):
        if block == "skip":
            height, color, hatch = 0.3, "#BBBBBB", None
        else:
            parts = block.split("_")  # k{3,5}_e{1,3,6}[_g2]
            height = float(parts[1][1:]) if len(parts) > 1 and parts[1][1:].isdigit() else 1.0
            color = colors.get(parts[0][1:], "#555555")
            hatch = "//" if block.endswith("_g2") else None
        ax.bar(i, height, color=color, edgecolor="black", hatch=hatch, width=0.8)
        ax.text(i, height + 0.15, block, rotation=90, ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(blocks)))
    ax.set_xticklabels([str(i) for i in range(len(blocks))], fontsize=7)
    ax.set_xlabel("searchable layer")
    ax.set_ylabel("expansion ratio")
    ax.set_ylim(0, 8.5)
    ax.set_title(title, fontsize=12)


def draw_architecture(arch: Architecture, *, title: str | None = None) -> Figure:
    """The picture of ``arch`` (DARTS cells, a NAS-Bench-201 cell, FBNet's layers, a recurrent
    cell, or Auto-DeepLab's cell and network path).

    Args:
        arch: An architecture record of the ``darts``, ``nb201``, ``fbnet``, ``darts_rnn`` or
            ``auto_deeplab`` space.
        title: A line above the picture (default: the architecture's key).

    Returns:
        A matplotlib Figure (save it with ``savefig`` or log it with the tracker).

    Raises:
        ValueError: For a space that has no drawing, naming the spaces that have one.
    """
    data = arch.to_dict()
    heading = title or arch.key()
    if arch.space == "darts":
        nodes = len(data["normal"]) // 2
        fig = Figure(figsize=(2.2 * nodes + 3.0, 2 * 3.4), layout="constrained")
        top, bottom = fig.subplots(2, 1)
        draw_darts_cell(top, [tuple(e) for e in data["normal"]], data["normal_concat"], "normal cell")
        draw_darts_cell(bottom, [tuple(e) for e in data["reduce"]], data["reduce_concat"], "reduction cell")
    elif arch.space == "nb201":
        fig = Figure(figsize=(9.0, 3.6), layout="constrained")
        draw_nb201_cell(fig.subplots(), arch.edges(), "NAS-Bench-201 cell")  # type: ignore[attr-defined]
    elif arch.space == "fbnet":
        blocks = data["blocks"]
        fig = Figure(figsize=(max(6.0, 0.4 * len(blocks) + 2), 4.2), layout="constrained")
        draw_fbnet_blocks(fig.subplots(), blocks, "FBNet blocks per layer")
    elif arch.space == "darts_rnn":
        recurrent = [tuple(e) for e in data["recurrent"]]
        fig = Figure(figsize=(2.2 * len(recurrent) + 5.0, 3.6), layout="constrained")
        draw_rnn_cell(fig.subplots(), recurrent, data["concat"], "recurrent cell")
    elif arch.space == "auto_deeplab":
        cell = [tuple(e) for e in data["cell"]]
        blocks = len(cell) // 2
        fig = Figure(figsize=(2.2 * blocks + 3.0, 2 * 3.4), layout="constrained")
        top, bottom = fig.subplots(2, 1)
        draw_darts_cell(top, cell, range(2, 2 + blocks), "cell", names=("H^{l-2}", "H^{l-1}", "H^{l}"))
        draw_network_path(bottom, data["path"], "network-level path")
    else:
        raise ValueError(
            f"no drawing for space {arch.space!r}; drawings exist for darts, nb201, fbnet, darts_rnn "
            "and auto_deeplab"
        )
    fig.suptitle(heading, fontsize=10)
    return fig


def _softmax(row: Sequence[float]) -> list[float]:
    top = max(row)
    exp = [math.exp(v - top) for v in row]
    total = sum(exp)
    return [e / total for e in exp]


def plot_arch_weights(
    history: Sequence[Mapping[str, Sequence[Sequence[float]]]],
    *,
    op_names: Sequence[str] | None = None,
    title: str = "architecture weights (softmax per edge) over epochs",
) -> Figure:
    """Heatmaps of the architecture weights over epochs.

    Args:
        history: One mapping per epoch, from a weight's name (``alpha_normal``, ...) to its raw
            matrix ``(edges, ops)`` (as ``EpochReport.arch_weights``).
        op_names: The operations' names, in column order (default ``op0``, ``op1``, ...).
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
    fig = Figure(figsize=(max(5.0, 0.25 * len(history) + 4), 1.0 + 0.11 * max(sizes)),
                 layout="constrained")
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    for ax, name in zip(axes, names, strict=True):
        edges, ops = len(history[-1][name]), len(history[-1][name][0])
        labels = list(op_names) if op_names and len(op_names) == ops else [f"op{i}" for i in range(ops)]
        grid = [[0.0] * len(history) for _ in range(edges * ops)]  # (edges * ops, epochs)
        for t, weights in enumerate(history):
            for e, row in enumerate(weights.get(name, [])):
                for o, w in enumerate(_softmax(row)):
                    grid[e * ops + o][t] = w
        image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_yticks(range(edges * ops))
        ax.set_yticklabels([f"e{e} {labels[o]}" for e in range(edges) for o in range(ops)], fontsize=5)
        for e in range(1, edges):
            ax.axhline(e * ops - 0.5, color="white", linewidth=0.8)
        ax.set_xticks(range(len(history)))
        ax.set_xticklabels([str(t) for t in range(len(history))], fontsize=6)
        ax.set_xlabel("epoch")
        ax.set_title(name, fontsize=10)
        fig.colorbar(image, ax=ax, shrink=0.6)
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
    if len(costs) != len(scores):
        raise ValueError(f"plot_pareto: {len(costs)} costs but {len(scores)} scores")
    fig = Figure(figsize=(6.4, 4.6), layout="constrained")
    ax = fig.subplots()
    labels = list(groups) if groups is not None else [""] * len(costs)
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
    ax.set_ylabel(score_label)
    ax.grid(alpha=0.3)
    if groups is not None or front:
        ax.legend(fontsize=8)
    ax.set_title(title, fontsize=11)
    return fig


def save_figure(fig: Figure, path: str | Path, *, dpi: int = 110) -> Path:
    """Write ``fig`` as PNG (or the format of the suffix) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path
