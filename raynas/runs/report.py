"""``raynas report``: what one search or several found, from the Parquet results store.

- the best architectures as a table (one row per distinct architecture, its best evaluation);
- the Pareto front of score against a cost (parameters, multiply-adds or latency: any metric);
- these two for each objective the searches rank by, apart: a training-free proxy's score
  (NASWOT's log-determinant, a synflow sum) is not an accuracy, and ranked with accuracies it
  would head every table;
- mean ± standard deviation across seeds: each search's best score, grouped by space, strategy
  and dataset (the sample standard deviation, ``n - 1`` in the denominator, as NAS papers report
  it over independent runs);
- the width and depth of the best architectures' cells against random cells of their space
  (Shu et al., ICLR 2020: NAS tends to find wide, shallow cells), for spaces that measure them,
  as text and, in the HTML page, as a plot per space;

written to the terminal and as an HTML page (with the Pareto plot embedded) or a PNG (the plot);
with ``--mlflow``, each space's cell-shape plot is also logged to the MLflow run of every reported
search (:func:`log_to_mlflow`).
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
import statistics
import tempfile
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raynas.errors import ConfigError
from raynas.runs.common import RANDOM_CELLS, cell_shapes, random_cell_shapes, shape_space
from raynas.tracking.plots import ParetoPanel, pareto_front, plot_cell_shapes, plot_pareto_panels, save_figure
from raynas.tracking.results import ResultsStore
from raynas.types import Architecture


@dataclass(frozen=True)
class Row:
    """One evaluated candidate, as the report shows it."""

    search: str
    trial_id: str
    architecture_key: str
    architecture: str
    score: float
    cost: float | None
    budget: float
    seed: int | None
    stopped_early: bool = False


def job_name(name: str) -> str:
    """The job a search belongs to: its name without the ``-seed<N>`` a multi-seed job adds."""
    return re.sub(r"-seed\d+$", "", name)


@dataclass(frozen=True)
class SeedSummary:
    """The best score of each search of one job (space, strategy, dataset), over its seeds."""

    job: str
    space: str
    strategy: str
    dataset: str
    objective: str
    seeds: tuple[int | None, ...]
    best_scores: tuple[float, ...]

    @property
    def mean(self) -> float:
        """Mean of the searches' best scores."""
        return statistics.fmean(self.best_scores)

    @property
    def std(self) -> float:
        """Sample standard deviation (0 for a single search)."""
        return statistics.stdev(self.best_scores) if len(self.best_scores) > 1 else 0.0

    def text(self) -> str:
        """``mean ± std`` over more than one search; the one search's best score otherwise."""
        if len(self.best_scores) > 1:
            return f"{_fmt_score(self.mean)} ± {_fmt_score(self.std)}"
        return _fmt_score(self.mean)


@dataclass(frozen=True)
class ShapeSummary:
    """Cell width and depth of the best architectures of one space against random cells of it:
    per cell type, the mean (width, depth) of each (width in units of a node's channels)."""

    space: str
    found: dict[str, tuple[float, float]]
    random: dict[str, tuple[float, float]]
    random_std: dict[str, tuple[float, float]]
    n_found: int
    n_random: int = RANDOM_CELLS
    # Per cell type, every (width, depth): of the best architectures, and of the random cells.
    found_points: dict[str, tuple[tuple[float, float], ...]] = field(default_factory=dict)
    random_points: dict[str, tuple[tuple[float, float], ...]] = field(default_factory=dict)

    def figure(self) -> Any:
        """The best architectures' cells against the random cells, drawn (:func:`plot_cell_shapes`)."""
        return plot_cell_shapes(self.found_points, self.random_points,
                                title=f"{self.space}: the best architectures' cells against random cells")

    def lines(self) -> list[str]:
        """The comparison as text, a line per cell type."""
        out = []
        for kind, (width, depth) in self.found.items():
            (rw, rd), (sw, sd) = self.random[kind], self.random_std[kind]
            out.append(f"  {self.space} {kind}: found {width:.2f}c wide, {depth:.2f} deep "
                       f"(n={self.n_found}); random {rw:.2f} ± {sw:.2f}c wide, {rd:.2f} ± {sd:.2f} deep "
                       f"(n={self.n_random})")
        return out


def _shape_summaries(best: Sequence[Row], records: Sequence[dict[str, Any]]) -> tuple[ShapeSummary, ...]:
    """The cell shapes of ``best`` (the report's best architectures) by space, against random
    cells drawn from each space (with the found cells' node count)."""
    arch_of = {r["architecture_key"]: r["architecture"] for r in records}
    points: dict[str, dict[str, list[tuple[float, float]]]] = {}
    spaces: dict[str, Any] = {}
    for row in best:
        try:
            arch = Architecture.from_json(arch_of[row.architecture_key])
        except Exception:  # a space this installation does not know
            continue
        label = f"{arch.space}" + (f" ({arch.nodes} nodes)" if hasattr(arch, "nodes") else "")
        if label not in spaces:
            spaces[label] = shape_space(arch)
        if spaces[label] is None:
            continue
        for kind, point in cell_shapes(spaces[label], arch).items():
            points.setdefault(label, {}).setdefault(kind, []).append(point)
    out = []
    for label, kinds in points.items():
        random = random_cell_shapes(spaces[label])
        out.append(ShapeSummary(
            space=label, found={k: _point_stat(statistics.fmean, v) for k, v in kinds.items()},
            random={k: _point_stat(statistics.fmean, random[k]) for k in kinds},
            random_std={k: _point_stat(statistics.stdev, random[k]) for k in kinds},
            n_found=len(next(iter(kinds.values()))),
            found_points={k: tuple(v) for k, v in kinds.items()},
            random_points={k: tuple(random[k]) for k in kinds},
        ))
    return tuple(out)


def _point_stat(stat: Any, points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """``stat`` (a mean, a standard deviation) of the widths and of the depths of ``points``."""
    return stat([w for w, _ in points]), stat([d for _, d in points])


@dataclass(frozen=True)
class Ranking:
    """The searches of one objective, ranked: scores of different objectives do not compare."""

    objective: str
    searches: tuple[str, ...]
    best: tuple[Row, ...]  # the best architectures, each once with its best evaluation
    front: tuple[Row, ...]  # the Pareto front of the objective against the report's cost
    rows: tuple[Row, ...]  # every evaluation
    uncosted: int = 0  # architectures without the cost metric: not on the front


@dataclass(frozen=True)
class Report:
    """What ``raynas report`` shows."""

    searches: tuple[str, ...]
    cost_metric: str
    rankings: tuple[Ranking, ...]  # one per objective, by name
    seeds: tuple[SeedSummary, ...]
    shapes: tuple[ShapeSummary, ...] = ()  # the best cells' width and depth against random cells
    runs: tuple[tuple[str, str], ...] = ()  # (search, its MLflow run) of the searches that have one


def build_report(
    store: ResultsStore, *, select: Sequence[str] = (), top: int = 10, cost: str = "params"
) -> Report:
    """Read the store and summarise the selected searches.

    Args:
        store: The results store.
        select: Search ids or job names (all searches when empty; a job's name selects every
            seed of a multi-seed job, ``<name>-seed<N>``).
        top: Rows of the best-architectures table.
        cost: The metric on the Pareto plot's x axis (``params``, ``macs``, ``latency_ms``...).

    Raises:
        ConfigError: No rows match, naming the searches the store holds.
    """
    table = store.read_table()
    records = table.to_pylist()
    if select:
        wanted = set(select)
        records = [r for r in records
                   if r["search"] in wanted or r["name"] in wanted or job_name(r["name"]) in wanted]
    if not records:
        known = ", ".join(store.searches()) or "none"
        what = f"searches {', '.join(select)}" if select else "any search"
        raise ConfigError(f"no results for {what} in {store.root}; searches there: {known}")
    metrics_seen = sorted({k for r in records for k, _ in (r["metrics"] or [])})
    if cost not in metrics_seen:
        raise ConfigError(f"report --cost {cost!r} is not a metric of these results; choose one of: "
                          f"{', '.join(metrics_seen)}")
    by_objective: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_objective.setdefault(r["objective"], []).append(r)
    rankings = tuple(_ranking(objective, by_objective[objective], top, cost)
                     for objective in sorted(by_objective))

    # A search's best per objective: a training-free search's retrained candidates (`final`) are
    # scored by accuracy, its others by the proxy.
    by_search: dict[tuple[str, str], dict[str, Any]] = {}
    for r in records:
        entry = by_search.setdefault((r["search"], r["objective"]), {"record": r, "best": -math.inf})
        if r["score"] is not None:
            entry["best"] = max(entry["best"], r["score"])
    groups: dict[tuple[str, str, str, str, str], list[dict[str, Any]]] = {}
    for entry in by_search.values():
        rec = entry["record"]
        key = (job_name(rec["name"] or rec["search"]), rec["space"], rec["strategy"], rec["dataset"],
               rec["objective"])
        groups.setdefault(key, []).append(entry)
    seeds = tuple(
        SeedSummary(job=k[0], space=k[1], strategy=k[2], dataset=k[3], objective=k[4],
                    seeds=tuple(e["record"]["seed"] for e in entries),
                    best_scores=tuple(e["best"] for e in entries))
        for k, entries in sorted(groups.items())
    )
    best = {row.architecture_key: row for ranking in rankings for row in ranking.best}  # each once
    run_of = {search: e["record"]["run_id"] for (search, _), e in by_search.items() if e["record"]["run_id"]}
    return Report(
        searches=tuple(sorted({search for search, _ in by_search})), cost_metric=cost, rankings=rankings,
        seeds=seeds, shapes=_shape_summaries(list(best.values()), records),
        runs=tuple(sorted(run_of.items())),
    )


def _ranking(objective: str, records: Sequence[dict[str, Any]], top: int, cost: str) -> Ranking:
    """The best ``top`` architectures and the Pareto front of ``records``, all of ``objective``."""
    rows = tuple(
        Row(
            search=r["search"], trial_id=r["trial_id"], architecture_key=r["architecture_key"],
            architecture=_arch_text(r["architecture"]),
            score=r["score"] if r["score"] is not None else -math.inf,
            cost=dict(r["metrics"] or []).get(cost), budget=r["budget"], seed=r["seed"],
            stopped_early=bool(r["stopped_early"]),
        )
        for r in records
    )
    best_of_arch: dict[str, Row] = {}
    for row in rows:
        if row.architecture_key not in best_of_arch or row.score > best_of_arch[row.architecture_key].score:
            best_of_arch[row.architecture_key] = row
    best = tuple(sorted(best_of_arch.values(), key=lambda r: (-r.score, r.search, r.trial_id))[:top])
    costed = [r for r in best_of_arch.values() if r.cost is not None and math.isfinite(r.score)]
    uncosted = sum(r.cost is None and math.isfinite(r.score) for r in best_of_arch.values())
    front = tuple(costed[i] for i in pareto_front([(r.cost, r.score) for r in costed]))  # type: ignore[misc]
    return Ranking(objective=objective, searches=tuple(sorted({r.search for r in rows})), best=best,
                   front=front, rows=rows, uncosted=uncosted)


def _arch_text(text: str) -> str:
    try:
        return str(Architecture.from_json(text))
    except Exception:  # a space this installation does not know: show the JSON
        return text


def _fmt_score(value: float) -> str:
    """An accuracy to four places; a proxy's score in the thousands (NASWOT's) to one."""
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"


def _fmt_cost(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.4g}"


def format_text(report: Report, *, width: int = 60) -> str:
    """The report as plain text for a terminal (architectures in full, wrapped at ``width``;
    ``*`` marks a candidate a scheduler stopped early): the best table and the Pareto front of
    each objective, then the seeds and the cell shapes."""
    objectives = ", ".join(ranking.objective for ranking in report.rankings)
    many = len(report.rankings) > 1
    lines = [f"Searches: {', '.join(report.searches)}  (objective{'s' if many else ''}: {objectives})"]
    for ranking in report.rankings:
        lines += ["", *_ranking_lines(ranking, report.cost_metric, width, many)]
    lines += ["", "Across seeds (each search's best score; mean ± sample std where n > 1):"]
    for s in report.seeds:
        seeds = ", ".join(str(x) for x in s.seeds)
        lines.append(
            f"  {s.job} {s.space}/{s.strategy}/{s.dataset}: {s.objective} {s.text()}  "
            f"(n={len(s.best_scores)}, seed{'s' if len(s.seeds) > 1 else ''} {seeds})"
        )
    if report.shapes:
        lines += ["", "Cell shapes of the best architectures against random cells (Shu et al., ICLR 2020):"]
        for shape in report.shapes:
            lines += shape.lines()
    return "\n".join(lines)


def _ranking_lines(ranking: Ranking, cost_metric: str, width: int, titled: bool) -> list[str]:
    """One objective's best table and Pareto front as text; ``titled`` names the objective and
    its searches first (a report of several objectives)."""
    lines = [f"Ranked by {ranking.objective}: {', '.join(ranking.searches)}"] if titled else []
    lines.append(f"Best architectures ({len(ranking.best)}; * stopped early):")
    lines.append(f"  {'#':>2}  {'score':>10}  {cost_metric:>12}  {'search':<24} {'trial':<12} architecture")
    indent = " " * (2 + 2 + 2 + 10 + 2 + 12 + 2 + 24 + 1 + 12 + 1)
    for i, r in enumerate(ranking.best, 1):
        arch = textwrap.wrap(r.architecture, width, break_on_hyphens=False) or [""]
        trial = r.trial_id + ("*" if r.stopped_early else "")
        score, cost = _fmt_score(r.score), _fmt_cost(r.cost)
        lines.append(f"  {i:>2}  {score:>10}  {cost:>12}  {r.search:<24} {trial:<12} {arch[0]}")
        lines += [indent + part for part in arch[1:]]
    lines += ["", f"Pareto front (highest {ranking.objective}, lowest {cost_metric}):"]
    for r in ranking.front:
        where = f"({r.search} {r.trial_id})"
        lines.append(f"  {_fmt_cost(r.cost):>12}  {_fmt_score(r.score):>10}  {r.architecture_key}  {where}")
    if not ranking.front:
        lines.append(f"  (no candidate has a {cost_metric} metric)")
    elif ranking.uncosted:
        lines.append(f"  ({ranking.uncosted} architecture(s) without a {cost_metric} metric left out)")
    return lines


def pareto_figure(report: Report) -> Any:
    """The Pareto plot of the report: every architecture, coloured by search, a panel per
    objective."""
    panels = []
    for ranking in report.rankings:
        costed = [r for r in ranking.rows if r.cost is not None and math.isfinite(r.score)]
        panels.append(ParetoPanel(
            costs=[r.cost for r in costed], scores=[r.score for r in costed],  # type: ignore[misc]
            score_label=ranking.objective, groups=[r.search for r in costed],
            title=f"{ranking.objective} against {report.cost_metric}",
        ))
    return plot_pareto_panels(panels, cost_label=report.cost_metric,
                              log_cost=report.cost_metric in ("params", "macs", "flops"))


def format_html(report: Report) -> str:
    """The report as one self-contained HTML page (the Pareto plot and each space's cell shapes
    embedded as PNG)."""
    esc = html.escape

    def embedded(figure: Any, alt: str) -> str:
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=110)
        data = base64.b64encode(buffer.getvalue()).decode()
        return f"<img alt='{esc(alt)}' src='data:image/png;base64,{data}'>"

    def table(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
        rows = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in body)
        return f"<table><tr>{''.join(f'<th>{esc(h)}</th>' for h in head)}</tr>{rows}</table>"

    sections = []
    for ranking in report.rankings:
        best = table(
            ["#", ranking.objective, report.cost_metric, "search", "trial", "stopped early", "key",
             "architecture"],
            [
                [str(i), _fmt_score(r.score), _fmt_cost(r.cost), r.search, r.trial_id,
                 "yes" if r.stopped_early else "", r.architecture_key, r.architecture]
                for i, r in enumerate(ranking.best, 1)
            ],
        )
        front = table([report.cost_metric, ranking.objective, "key", "search", "trial"],
                      [[_fmt_cost(r.cost), _fmt_score(r.score), r.architecture_key, r.search, r.trial_id]
                       for r in ranking.front])
        by = f" by {esc(ranking.objective)}" if len(report.rankings) > 1 else ""
        sections.append(f"<h2>Best architectures{by}</h2>{best}<h2>Pareto front{by}</h2>{front}")
    seeds = table(["job", "space", "strategy", "dataset", "objective", "best (mean ± std)", "n", "seeds"],
                  [[s.job, s.space, s.strategy, s.dataset, s.objective, s.text(), str(len(s.best_scores)),
                    ", ".join(str(x) for x in s.seeds)] for s in report.seeds])
    shapes = "".join(
        "".join(f"<p>{esc(line.strip())}</p>" for line in shape.lines())
        + embedded(shape.figure(), f"cell shapes of {shape.space}")
        for shape in report.shapes
    )
    if shapes:
        shapes = f"<h2>Cell shapes against random cells (Shu et al., ICLR 2020)</h2>{shapes}"
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1.5em}"
             "td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px;text-align:left}")
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>raynas report</title>"
        f"<style>{style}</style></head><body><h1>raynas report</h1>"
        f"<p>Searches: {esc(', '.join(report.searches))}</p>"
        f"{''.join(sections)}{embedded(pareto_figure(report), 'Pareto plot')}"
        f"<h2>Across seeds</h2>{seeds}{shapes}</body></html>"
    )


def write_report(report: Report, path: str | Path) -> Path:
    """Write ``report`` as HTML (``.html``) or as the Pareto plot (``.png``)."""
    path = Path(path)
    if path.suffix == ".html":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(format_html(report))
        return path
    if path.suffix == ".png":
        return save_figure(pareto_figure(report), path)
    raise ConfigError(f"report --out {str(path)!r}: write .html or .png")


def shape_artifact(shape: ShapeSummary) -> str:
    """The artifact path of a space's cell-shape plot in a search's MLflow run
    (``report/cell_shapes_<space>.png``, the space's label in letters, digits and ``_``)."""
    return f"report/cell_shapes_{re.sub(r'[^A-Za-z0-9]+', '_', shape.space).strip('_')}.png"


def log_to_mlflow(report: Report, tracking_uri: str) -> list[str]:
    """Log each space's cell-shape plot (the best cells against random cells of the space) to
    the MLflow run of every reported search, as :func:`shape_artifact` names it.

    Args:
        report: The report (its :attr:`Report.runs` are the runs logged to).
        tracking_uri: The MLflow store that holds the searches' runs.

    Returns:
        The artifact paths logged to each run (none for spaces without cell shapes).

    Raises:
        ConfigError: No reported search has an MLflow run, or one's run is not in the store.
    """
    from mlflow.exceptions import MlflowException

    from raynas.config import redact_uri
    from raynas.tracking.mlflow_tracker import check_server, open_client

    if not report.runs:
        raise ConfigError("report --mlflow: none of these searches recorded an MLflow run")
    check_server(tracking_uri, existing=True)
    client = open_client(tracking_uri)
    for search, run_id in report.runs:
        try:
            client.get_run(run_id)
        except MlflowException:
            raise ConfigError(f"report --mlflow: the MLflow run {run_id} of search {search} is not in "
                              f"{redact_uri(tracking_uri)}; give its store with --tracking-uri") from None
    artifacts = [shape_artifact(shape) for shape in report.shapes]
    with tempfile.TemporaryDirectory() as tmp:
        for shape, artifact in zip(report.shapes, artifacts, strict=True):
            local = save_figure(shape.figure(), Path(tmp) / Path(artifact).name)
            for _, run_id in report.runs:
                client.log_artifact(run_id, str(local), str(Path(artifact).parent))
    return artifacts
