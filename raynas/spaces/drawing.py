"""Pictures of architectures: the drawing primitives spaces use in their ``draw(arch)`` hook, and a
default picture for any space with the flat categorical view.

- :func:`draw_darts_cell`: a DARTS cell as in Figures 4 and 5 of Liu et al., "DARTS:
  Differentiable Architecture Search" (ICLR 2019): the cell inputs ``c_{k-2}``, ``c_{k-1}``, the
  intermediate nodes, the output ``c_{k}`` and each chosen edge labelled with its operation
  (:func:`draw_darts_cells`: a genotype's normal and reduction cell, one above the other);
- :func:`draw_nb201_cell`: a NAS-Bench-201 cell (Dong & Yang, ICLR 2020, Fig. 1), its four nodes
  and six labelled edges (``none`` edges left out);
- :func:`draw_fbnet_blocks`: an FBNet architecture (Wu et al., CVPR 2019, Fig. 6) as its chain of
  per-layer blocks, coloured by kernel size and sized by expansion;
- :func:`draw_rnn_cell`: a DARTS recurrent cell (Liu et al., Fig. 6), its nodes and activations;
- :func:`draw_network_path`: Auto-DeepLab's network-level path over the downsampling rates (Liu et
  al., CVPR 2019, Fig. 1 and 3);
- :func:`draw_choices`: any space's decisions and the options an architecture takes.

:func:`picture` is what the drivers call: the space's own ``draw`` if it has one, else the
default. Figures are built with matplotlib's object-oriented API (no pyplot, no global backend
change), so drawing is safe in any process, with or without a display.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from raynas.types import Architecture, ChoiceSpace

# matplotlib loads when a picture is drawn, not with the drivers that import picture().
if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

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
    from matplotlib.patches import FancyBboxPatch

    x, y = xy
    ax.add_patch(FancyBboxPatch(
        (x - width / 2, y - 0.22), width, 0.44, boxstyle="round,pad=0.04", facecolor=color,
        edgecolor="black", linewidth=1.0, zorder=3,
    ))
    ax.text(x, y, text, ha="center", va="center", fontsize=10, zorder=4)


def _edge(ax: Any, start: tuple[float, float], end: tuple[float, float], label: str | None,
          color: str, *, rad: float = 0.0) -> None:
    from matplotlib.patches import FancyArrowPatch

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


def draw_darts_cells(genotype: Any, titles: tuple[str, str], *, extra_height: float = 0.0) -> Figure:
    """A figure of a DARTS genotype's two cells, the normal one above the reduction one.

    Args:
        genotype: A :class:`~raynas.spaces.darts_genotype.DartsGenotype`.
        titles: The two panels' titles.
        extra_height: Inches added to the figure's height (room for a longer suptitle).
    """
    g = genotype
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2.2 * g.nodes + 3.0, 2 * 3.4 + extra_height), layout="constrained")
    top, bottom = fig.subplots(2, 1)
    draw_darts_cell(top, g.normal, g.normal_concat, titles[0])
    draw_darts_cell(bottom, g.reduce, g.reduce_concat, titles[1])
    return fig


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


def draw_choices(space: ChoiceSpace, arch: Architecture, *, title: str | None = None) -> Figure:
    """The default picture of an architecture of any space with the flat categorical view: one row
    per decision, its options in a line and the chosen one highlighted."""
    decisions = space.decisions()
    values = space.encode(arch)
    width = max((len(d.options) for d in decisions), default=1)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(min(16.0, 1.7 * width + 2.5), 0.45 * len(decisions) + 1.2), layout="constrained")
    ax = fig.subplots()
    for row, (decision, value) in enumerate(zip(decisions, values, strict=True)):
        y = len(decisions) - 1 - row
        ax.text(-0.6, y, decision.name, ha="right", va="center", fontsize=8)
        for col, option in enumerate(decision.options):
            chosen = col == value
            ax.text(col, y, option, ha="center", va="center", fontsize=7,
                    color="black" if chosen else "#888888", fontweight="bold" if chosen else "normal",
                    bbox={"boxstyle": "round,pad=0.2", "linewidth": 0.8,
                          "facecolor": _op_color(option) if chosen else "white",
                          "edgecolor": "black" if chosen else "#CCCCCC"})
    ax.set_xlim(-0.7, width - 0.3)
    ax.set_ylim(-0.7, len(decisions) - 0.3)
    ax.axis("off")
    ax.set_title(title or arch.key(), fontsize=10)
    return fig


def picture(space: Any, arch: Architecture) -> Figure | None:
    """The picture of ``arch``: the space's own ``draw(arch)``, else :func:`draw_choices` for a space
    with the flat categorical view, else None (a space with neither gets no picture)."""
    draw = getattr(space, "draw", None)
    if draw is not None:
        return draw(arch)
    if isinstance(space, ChoiceSpace):
        return draw_choices(space, arch)
    log.info("no picture of %s: its space has neither draw() nor decisions()", arch.key())
    return None
