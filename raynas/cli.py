"""The ``raynas`` command line; the only module that parses argv.

    raynas search CONFIG [--set key.sub=value ...] [--address ADDR] [--tracking-uri URI] [--fresh]
    raynas describe --space darts --genotype NAME_OR_FILE --dataset cifar10 [--json]
    raynas report [--results DIR_OR_S3] [--search ID_OR_NAME ...] [--top N] [--cost METRIC] [--out FILE]

Errors in the user's input print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from raynas.errors import RaynasError, WorkerLostError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raynas", description="Neural architecture search on Ray, tracked in MLflow."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    search = commands.add_parser("search", help="run (or resume) a search from a job file")
    search.add_argument("config", help="a YAML job file, e.g. jobs/quickstart.yaml")
    search.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.epochs=3 (repeatable)",
    )
    search.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else local)")
    search.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else ./mlflow.db)"
    )
    search.add_argument(
        "--fresh", action="store_true", help="start over even if an unfinished checkpoint exists"
    )

    describe = commands.add_parser(
        "describe", help="parameters and multiply-adds of an architecture's network"
    )
    describe.add_argument("--space", default="darts", help="search space (default: darts)")
    describe.add_argument(
        "--genotype", "--arch", dest="arch", required=True,
        help="a published name (e.g. DARTS_V2), a JSON file, or the space's string form",
    )
    describe.add_argument("--dataset", default="cifar10", help="cifar10, cifar100 or imagenet")
    describe.add_argument("--channels", type=int, help="initial channels (default: the paper's)")
    describe.add_argument("--layers", type=int, help="number of cells (default: the paper's)")
    describe.add_argument("--json", action="store_true", help="print one JSON object")

    report = commands.add_parser(
        "report", help="best architectures, Pareto front and mean ± std over seeds from the results store"
    )
    report.add_argument(
        "--results", default="runs/results",
        help="the Parquet results store, a folder or s3://bucket/prefix (default: runs/results)",
    )
    report.add_argument(
        "--search", dest="searches", action="append", default=[], metavar="ID_OR_NAME",
        help="a search id or job name (repeatable; default: every search in the store)",
    )
    report.add_argument("--top", type=int, default=10, help="rows of the best-architectures table")
    report.add_argument(
        "--cost", default="params", help="the Pareto front's cost metric (params, macs, latency_ms, ...)"
    )
    report.add_argument("--out", help="also write the report as HTML (.html) or the Pareto plot (.png)")
    return parser


def _report(args: argparse.Namespace) -> None:
    from raynas.report import build_report, format_text, write_report
    from raynas.tracking.results import ResultsStore

    store = ResultsStore(args.results)
    store.check()
    report = build_report(store, select=args.searches, top=args.top, cost=args.cost)
    print(format_text(report))
    if args.out:
        print(f"\nReport written to {write_report(report, args.out)}")


def _search(args: argparse.Namespace) -> None:
    from raynas.config import load_config
    from raynas.search import format_duration, run_search

    overrides = list(args.overrides)
    if args.address:
        overrides.append(f"execution.address={args.address}")
    if args.tracking_uri:
        overrides.append(f"tracking.tracking_uri={args.tracking_uri}")
    config = load_config(args.config, overrides)
    result = run_search(config, fresh=args.fresh)
    m = result.metrics
    print(
        f"\nSearch finished in {format_duration(result.seconds)}: "
        f"valid accuracy {m['valid_acc']:.1%} (supernet, held-out half)\n"
        f"Genotype: {result.architecture}\n"
        f"Parameters: {result.params / 1e6:.3f}M as searched ({config.data.name}), "
        f"{result.params_cifar10 / 1e6:.2f}M as the space's CIFAR-10 network of the papers\n"
        f"MLflow run: {result.run_id}\n"
        f"Open it: {result.run_link}"
    )


def _describe(args: argparse.Namespace) -> None:
    from raynas.data import dataset_info
    from raynas.profile import model_stats
    from raynas.spaces import SPACES

    space = SPACES.create(args.space)
    arch = space.parse(args.arch)
    info = dataset_info(args.dataset)
    model = space.build(arch, info, channels=args.channels, layers=args.layers, auxiliary=True)
    stats = model_stats(model, (info.in_channels, info.image_size, info.image_size))
    if args.json:
        print(json.dumps({"space": args.space, "dataset": info.name, **stats.as_dict()}))
        return
    print(
        f"{args.arch} on {info.name} ({info.image_size}x{info.image_size}):\n"
        f"  parameters        {stats.params:>13,}  ({stats.params / 1e6:.2f}M, without an "
        f"auxiliary head)\n"
        f"  with auxiliary    {stats.params_with_aux:>13,}\n"
        f"  multiply-adds     {stats.macs:>13,}  ({stats.macs / 1e6:.1f}M per image)\n"
        f"  FLOPs             {stats.flops:>13,}  (multiply-adds + bias additions)"
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``raynas`` console script."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    args = _parser().parse_args(argv)
    try:
        if args.command == "search":
            _search(args)
        elif args.command == "report":
            _report(args)
        else:
            _describe(args)
    except WorkerLostError as exc:  # not the user's input: a failure to resume from
        print(f"raynas: error: {exc}", file=sys.stderr)
        return 1
    except RaynasError as exc:
        print(f"raynas: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("raynas: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
