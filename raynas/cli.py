"""The ``raynas`` command line; the only module that parses argv.

    raynas search CONFIG [--set key.sub=value ...] [--address ADDR] [--tracking-uri URI] [--fresh]
    raynas train CONFIG [--set key.sub=value ...] [--address ADDR] [--tracking-uri URI] [--fresh]
    raynas study CONFIG [--set key.sub=value ...] [--address ADDR] [--tracking-uri URI] [--fresh]
    raynas describe --space darts --genotype NAME_OR_FILE --dataset cifar10 [--json]
    raynas report [--results DIR_OR_S3] [--search ID_OR_NAME ...] [--top N] [--cost METRIC] [--out FILE]
                  [--mlflow [--tracking-uri URI]]
    raynas export RUN --format onnx|torchscript --out FILE [--input-shape 1x3x32x32] [--tracking-uri URI]
    raynas latency [--job JOB.yaml | --space fbnet --dataset imagenet] --device NAME --out DIR
                   [--cluster ADDRESS] [--validate N]

Errors in the user's input print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn

from raynas.errors import ClusterLostError, ConfigError, RaynasError, WorkerLostError, no_memory, no_room


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as one line, as every other error of the command line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"raynas: error: {' '.join(message.split())} (`{self.prog} --help` lists the options)\n")


def _at_least(minimum: int, *, or_zero: bool = False) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``minimum`` (or 0, which turns a thing off)."""

    def whole(text: str) -> int:
        value = int(text)  # not a number: argparse's "invalid int value"
        if value < minimum and not (or_zero and value == 0):
            raise argparse.ArgumentTypeError(
                f"must be {'0 (none) or ' if or_zero else ''}{minimum} or more, got {value}"
            )
        return value

    whole.__name__ = "int"  # argparse names the type so in its message
    return whole


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
    search.add_argument("--device", help=DEVICE_HELP)
    search.add_argument(
        "--fresh", action="store_true",
        help="start a new search even if this job's search is unfinished (resumed by default) or "
        "finished (its result shown by default)",
    )

    train = commands.add_parser(
        "train", help="retrain (or transfer) a found architecture from scratch, from a job file"
    )
    train.add_argument("config", help="a YAML retraining job, e.g. jobs/retrain_quickstart.yaml")
    train.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set architecture=run:<MLflow run id> (repeatable)",
    )
    train.add_argument("--address", help="Ray cluster to join (with execution.backend: ray)")
    train.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else ./mlflow.db)"
    )
    train.add_argument("--device", help=DEVICE_HELP)
    train.add_argument(
        "--fresh", action="store_true", help="start over even if an unfinished checkpoint exists"
    )

    study = commands.add_parser(
        "study", help="retrain cells at several layer counts: a table and a plot of accuracy against depth"
    )
    study.add_argument("config", help="a YAML study job, e.g. jobs/layer_count_quickstart.yaml")
    study.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set study.layers=[2,5,8] (repeatable)",
    )
    study.add_argument("--address", help="Ray cluster to join (with execution.backend: ray)")
    study.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else ./mlflow.db)"
    )
    study.add_argument("--device", help=DEVICE_HELP)
    study.add_argument(
        "--fresh", action="store_true", help="start over even if an unfinished study of the job exists"
    )

    describe = commands.add_parser(
        "describe", help="parameters and multiply-adds of an architecture's network"
    )
    describe.add_argument("--space", default="darts", help="search space (default: darts)")
    describe.add_argument(
        "--genotype", "--arch", dest="arch", required=True,
        help="a published name (e.g. DARTS_V2), a JSON file, or the space's string form",
    )
    describe.add_argument(
        "--dataset", help="the dataset whose classes and input size the network is built for: cifar10, "
        "cifar100, ImageNet16-120, imagenet, svhn, ptb, ... (default: the space's, cifar10 or ptb)"
    )
    describe.add_argument("--channels", type=_at_least(1), help="initial channels (default: the paper's)")
    describe.add_argument("--layers", type=_at_least(1), help="number of cells (default: the paper's)")
    describe.add_argument("--input-size", help="HxW of the input, e.g. 1024x2048 (default: the dataset's)")
    describe.add_argument("--json", action="store_true", help="print one JSON object")

    latency = commands.add_parser(
        "latency", help="measure a device's latency lookup table (per node type with --cluster)"
    )
    latency.add_argument("--job", help="take the space (and its layout) and the dataset from a job file")
    latency.add_argument("--space", default="fbnet", help="search space (default: fbnet)")
    latency.add_argument("--dataset", default="imagenet", help="input shape and classes (default: imagenet)")
    latency.add_argument("--device", help="the device name the table is keyed by (default: cpu or cuda)")
    latency.add_argument(
        "--out", required=True, help="a table folder (writes <out>/<device>.json, merged) or a .json file"
    )
    latency.add_argument(
        "--cluster", metavar="ADDRESS", help="measure a table per node type of this Ray cluster, in parallel"
    )
    latency.add_argument("--threads", type=int, default=1, help="torch threads while timing (default: 1)")
    latency.add_argument("--batch-size", type=int, default=1, help="images per forward pass (default: 1)")
    latency.add_argument("--warmup", type=int, default=10, help="untimed runs first (default: 10)")
    latency.add_argument("--repeats", type=int, default=30, help="timed runs, median taken (default: 30)")
    latency.add_argument(
        "--validate", type=_at_least(2, or_zero=True), default=0, metavar="N",
        help="also time N sampled whole networks and print the table's rank correlation with them",
    )

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
    report.add_argument("--top", type=_at_least(1), default=10, help="rows of the best-architectures table")
    report.add_argument(
        "--cost", default="params", help="the Pareto front's cost metric (params, macs, latency_ms, ...)"
    )
    report.add_argument("--out", help="also write the report as HTML (.html) or the Pareto plot (.png)")
    report.add_argument(
        "--mlflow", action="store_true",
        help="also log each space's cell-shape plot (best cells against random ones) to every reported "
             "search's MLflow run, as report/cell_shapes_<space>.png",
    )
    report.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI of --mlflow (default: MLFLOW_TRACKING_URI, else ./mlflow.db)",
    )

    export = commands.add_parser(
        "export", help="write a found (retrained) network as ONNX or TorchScript, for serving"
    )
    export.add_argument(
        "run", metavar="RUN", help="run:<MLflow run id> (the run's model) or an MLflow model folder"
    )
    export.add_argument("--format", required=True, choices=("onnx", "torchscript"))
    export.add_argument("--out", required=True, help="the file to write, e.g. model.onnx")
    export.add_argument("--input-shape", help="the input, batch first, e.g. 1x3x32x32 (default: the model's)")
    export.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else ./mlflow.db)"
    )
    return parser


def _export(args: argparse.Namespace) -> None:
    from pathlib import Path

    from raynas import storage
    from raynas.runs.export import export_network, parse_shape

    shape = parse_shape(args.input_shape) if args.input_shape else None
    storage.check_reachable(Path(args.out).expanduser().parent)  # before the model is loaded
    result = export_network(args.run, format=args.format, out=args.out, input_shape=shape,
                            tracking_uri=args.tracking_uri)
    checked = ("" if result.max_difference is None
               else f"; outputs within {result.max_difference:.2g} of the network's")
    logged = f"; logged to MLflow run {result.run_id} as export/{result.path.name}" if result.run_id else ""
    print(f"Exported {args.run} as {result.format} to {result.path} (input "
          f"{'x'.join(map(str, result.input_shape))}, batch free){checked}{logged}")
    if result.format == "torchscript":
        print("Note: torch deprecates TorchScript (torch.jit) in favour of torch.export; "
              "--format onnx is the lasting format")


def _report(args: argparse.Namespace) -> None:
    from raynas.runs.report import build_report, format_text, write_report
    from raynas.tracking.results import ResultsStore

    if args.tracking_uri and not args.mlflow:
        raise ConfigError("report --tracking-uri is where --mlflow logs: add --mlflow")
    if args.out:
        from pathlib import Path

        from raynas import storage

        storage.check_reachable(Path(args.out).expanduser().parent)  # before the report is built
    store = ResultsStore(args.results)
    store.check()
    report = build_report(store, select=args.searches, top=args.top, cost=args.cost)
    print(format_text(report))
    if args.out:
        print(f"\nReport written to {write_report(report, args.out)}")
    if args.mlflow:
        from raynas.environment import default_tracking_uri
        from raynas.runs.report import log_to_mlflow

        logged = log_to_mlflow(report, args.tracking_uri or default_tracking_uri())
        runs = ", ".join(run_id for _, run_id in report.runs)
        print(f"\nLogged {', '.join(logged)} to MLflow run(s) {runs}" if logged
              else "\nNothing logged to MLflow: no reported architecture has a cell shape")


def _search(args: argparse.Namespace) -> None:
    from raynas.config import read_job
    from raynas.environment import check_environment
    from raynas.latency import check_named_table

    # Checked before torch, Ray and MLflow are imported (seconds), so a bad job or a broken
    # environment answers at once.
    raw = read_job(args.config, _overrides(args), kind="search")
    check_named_table(raw.get("strategy"))
    _warn_if_lost_with_ray_job(raw)
    check_environment(raw)

    from raynas.runs.common import format_duration, reference_name
    from raynas.runs.jobs import parse_job
    from raynas.runs.search import run_search, run_seeds

    config = parse_job(raw)
    if config.seeds:
        seeds = run_seeds(config, fresh=args.fresh)
        results = seeds.results
        print(f"\n{len(results)} searches, one per seed {list(config.seeds)}:")
        for seed, result in zip(config.seeds, results, strict=True):
            print(f"  seed {seed}: {_scores(result.metrics, config)}  {result.architecture}")
        for key in ("valid_acc", "valid_loss"):
            if key in seeds.summary:
                mean, std = seeds.summary[key]
                print(f"{key}: {mean:.4f} ± {std:.4f} (mean ± std over {len(results)} seeds)")
        if (chosen := seeds.selection) is not None:
            print(f"Chosen: seed {chosen.seed}'s {chosen.result.architecture}, valid_acc "
                  f"{chosen.result.score:.2%} after {config.final.epochs} epochs from scratch "
                  f"(of {len(chosen.retrained)} retrained; MLflow run {chosen.run_id})")
        return
    result = run_search(config, fresh=args.fresh)
    m = result.metrics
    print(
        f"\nSearch finished in {format_duration(result.seconds)}: "
        f"{_scores(m, config)} ({scored_by(config)})\n"
        f"Genotype: {result.architecture}\n"
        f"Parameters: {result.params / 1e6:.3f}M as searched ({config.data.name}), "
        f"{result.params_cifar10 / 1e6:.2f}M as the space's {reference_name(config.space.name)} "
        "network of the papers\n"
        f"MLflow run: {result.run_id}\n"
        f"Open it: {result.run_link}"
    )


def scored_by(config: Any) -> str:
    """What the score printed for a search's answer measures."""
    from raynas.strategies.registry import STRATEGIES

    if config.evaluator is None and config.final.top:
        return (f"the best of {config.final.top} architectures drawn from {config.strategy.name}'s "
                "distribution, retrained from scratch")
    if config.evaluator is None:
        if getattr(STRATEGIES.get(config.strategy.name), "trains_weights", True):
            return "supernet, held-out half"
        return ("untrained supernet, held-out half: this search trains no weights; "
                "`raynas train` retrains the genotype")
    if config.final.top:
        return f"the best of the {config.final.top} best candidates, retrained from scratch"
    return f"best candidate, {config.evaluator.name} evaluator"


def _warn_if_lost_with_ray_job(raw: dict[str, Any]) -> None:
    """Under ``ray job submit``, one line if the MLflow store or output folder of the job ``raw``
    (its sections checked by :func:`raynas.config.read_job`) is local."""
    from raynas.config import TrackingConfig, build
    from raynas.ray_job import local_results_warning

    if line := local_results_warning(build(TrackingConfig, raw.get("tracking") or {}, "tracking")):
        print(f"raynas: warning: {line}", file=sys.stderr, flush=True)


def _scores(metrics: dict[str, float], config: Any) -> str:
    """What a search's result scored: validation accuracy, and mIoU or perplexity where the task
    has them; a training-free proxy's score where nothing was trained."""
    parts = [f"valid accuracy {metrics['valid_acc']:.1%}"] if "valid_acc" in metrics else []
    if "valid_miou" in metrics:
        parts.append(f"mIoU {metrics['valid_miou']:.1%}")
    if "valid_ppl" in metrics:
        parts.append(f"perplexity {metrics['valid_ppl']:.1f}")
    proxy = getattr(getattr(config.evaluator, "config", None), "proxy", None)
    if not parts and proxy in metrics:
        parts.append(f"{proxy} score {metrics[proxy]:.4g} (untrained)")
    return ", ".join(parts) or ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())


def _overrides(args: argparse.Namespace) -> list[str]:
    overrides = list(args.overrides)
    if args.address:
        overrides.append(f"execution.address={args.address}")
    if args.tracking_uri:
        overrides.append(f"tracking.tracking_uri={args.tracking_uri}")
    if args.device:
        overrides.append(f"execution.device={args.device}")
    return overrides


def _train(args: argparse.Namespace) -> None:
    from raynas.config import read_job
    from raynas.environment import check_environment

    raw = read_job(args.config, _overrides(args), kind="retrain")  # before the heavy imports
    _warn_if_lost_with_ray_job(raw)
    check_environment(raw)

    from raynas.runs.common import format_duration
    from raynas.runs.jobs import parse_retrain_job
    from raynas.runs.retrain import run_retrain_job

    config = parse_retrain_job(raw)
    result = run_retrain_job(config, fresh=args.fresh)
    source = f" (found by search run {result.source_run_id})" if result.source_run_id else ""
    m = result.metrics
    scores = (  # a language model: the network of the lowest validation loss, as rnn/train.py tests
        f"test perplexity {m['best_test_ppl']:.2f} (the network of the lowest validation loss, "
        f"epoch {int(m['best_epoch'])})" if "best_test_ppl" in m else f"test accuracy {m['test_acc']:.1%}"
    )
    print(
        f"\nTraining finished in {format_duration(result.seconds)}: {scores}\n"
        f"Architecture: {result.architecture}{source}\n"
        f"Parameters: {result.params / 1e6:.3f}M; registered model version {result.registered_version}\n"
        f"MLflow run: {result.run_id}"
    )


def _study(args: argparse.Namespace) -> None:
    from raynas.config import load_yaml
    from raynas.environment import check_environment

    raw = load_yaml(args.config, _overrides(args))  # before the heavy imports
    _warn_if_lost_with_ray_job(raw)
    check_environment(raw)

    from raynas.runs.common import format_duration
    from raynas.runs.study import parse_study_job, run_study

    job = parse_study_job(raw)
    result = run_study(job, fresh=args.fresh)
    print(f"\nStudy finished in {format_duration(result.seconds)}: test accuracy by layer count")
    print(f"  {'cell':<12}{'layers':>7}{'test acc':>10}{'params':>10}{'MACs':>10}")
    for row in result.rows:
        print(f"  {row['cell']:<12}{row['layers']:>7}{row['test_acc']:>10.1%}{row['params'] / 1e6:>9.3f}M"
              f"{row['macs'] / 1e6:>9.1f}M")
    print(f"MLflow run: {result.run_id} (layer_count.csv, layer_count.png)")


def _input_size(text: str | None, default: int) -> tuple[int, int]:
    """``"1024x2048"`` -> (1024, 2048); None -> the dataset's square size."""

    if text is None:
        return default, default
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--input-size {text!r}: expected HxW, e.g. 1024x2048") from None
    if height < 1 or width < 1:
        raise ConfigError(f"--input-size {text!r}: both sides must be positive")
    return height, width


def _describe(args: argparse.Namespace) -> None:
    from raynas.data import dataset_info
    from raynas.profile import count_params, model_stats
    from raynas.runs.jobs import check_inputs
    from raynas.spaces import SPACES

    space = SPACES.create(args.space)
    arch = space.parse(args.arch)
    info = dataset_info(args.dataset or getattr(space, "reference_dataset", "cifar10"))
    check_inputs(args.space, info.name)
    options: dict[str, Any] = {"channels": args.channels, "layers": args.layers}
    if "auxiliary" in inspect.signature(space.build).parameters:  # where the networks have one
        options["auxiliary"] = info.task == "classification"  # no dense-prediction heads
    try:
        model = space.build(arch, info, **options)
    except (RuntimeError, ValueError, IndexError) as exc:  # sizes the network's code cannot take
        if no_memory(exc):
            raise  # (said as such by main)
        raise ConfigError(
            f"the {args.space!r} network of {args.arch} cannot be built as asked ({exc})"
        ) from None
    if hasattr(space, "example_input"):  # token inputs (darts_rnn): no image, no MAC count
        params = count_params(model)
        if args.json:
            print(json.dumps({"space": args.space, "dataset": info.name, "params": params}))
        else:
            print(f"{args.arch} on {info.name} (vocabulary {info.num_classes:,}):\n"
                  f"  parameters        {params:>13,}  ({params / 1e6:.2f}M)")
        return
    height, width = _input_size(args.input_size, info.image_size)
    try:
        stats = model_stats(model, (info.in_channels, height, width))
    except RuntimeError as exc:  # inputs smaller than the network's downsampling
        if no_memory(exc):
            raise  # (said as such by main)
        reason = str(exc).strip().splitlines()[0]
        raise ConfigError(
            f"the {args.space!r} network of {args.arch} does not run on {height}x{width} inputs "
            f"({reason}); give a larger --input-size or another --dataset"
        ) from None
    if args.json:
        print(json.dumps({"space": args.space, "dataset": info.name, **stats.as_dict()}))
        return
    # The auxiliary head's line only where the network has one (its parameters counted apart).
    head = stats.params_with_aux != stats.params
    print(
        f"{args.arch} on {info.name} ({height}x{width}):\n"
        f"  parameters        {stats.params:>13,}  ({stats.params / 1e6:.2f}M"
        + (", without the auxiliary head)\n" if head else ")\n")
        + (f"  with auxiliary    {stats.params_with_aux:>13,}\n" if head else "")
        + f"  multiply-adds     {stats.macs:>13,}  ({stats.macs / 1e6:.1f}M per image)\n"
        f"  FLOPs             {stats.flops:>13,}  (multiply-adds + bias additions)"
    )


def _latency(args: argparse.Namespace) -> None:
    from pathlib import Path

    import torch

    from raynas import storage
    from raynas.data import dataset_info
    from raynas.latency import LatencyTable, TimingOptions, build_table, check_table, table_path
    from raynas.spaces import SPACES

    if args.job:
        from raynas.runs.jobs import load_job

        job = load_job(args.job)
        space_name, space_config, info = job.space.name, job.space.config, dataset_info(job.data.name)
    else:
        entry = SPACES.entry(args.space)
        space_name, space_config, info = args.space, entry.config(), dataset_info(args.dataset)
    space = SPACES.create(space_name, space_config)
    if not hasattr(space, "latency_items"):
        timed = ", ".join(n for n in SPACES.names() if hasattr(SPACES.get(n), "latency_items"))
        raise ConfigError(f"space {space_name!r} has no latency tables; spaces with them: {timed}")
    options = TimingOptions(
        batch_size=args.batch_size, warmup=args.warmup, repeats=args.repeats, threads=args.threads
    )
    out = Path(args.out)
    if args.cluster:  # before ray.init's minutes of retries
        from raynas.execution.ray_actors import check_address

        check_address(args.cluster, "--cluster")
    # Where the tables go can be written, before minutes of timing.
    storage.check_reachable(out.parent if out.suffix == ".json" else out)
    if args.cluster:
        import ray

        from raynas.execution.latency_profiler import profile_cluster

        ray.init(address=args.cluster, logging_level="WARNING")
        for name, result in profile_cluster(space_name, space_config, info, options=options,
                                            out_dir=args.out).items():
            print(f"{name}: {len(result.table.entries)} entries measured on node {result.node_id[:12]} "
                  f"({result.table.description}) -> {result.path}")
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = args.device or device.type
    path = out if out.suffix == ".json" else table_path(out, name)
    table = build_table(space, info, device_name=name, device=device, options=options)
    saved = (LatencyTable.load(path).merged(table) if path.is_file() else table).save(path)
    print(f"{name}: {len(table.entries)} entries ({table.description}) -> {saved}")
    if args.validate:
        check = check_table(table, space, info, samples=args.validate, device=device, options=options)
        for arch, pred, real in zip(check.architectures, check.predicted_ms, check.measured_ms, strict=True):
            print(f"  predicted {pred:8.3f} ms  measured {real:8.3f} ms  {arch}")
        print(f"Spearman rank correlation over {args.validate} architectures: {check.spearman:.3f}")


def _one_line(exc: BaseException) -> str:
    """An error's message as one line (a message may quote text with line breaks)."""
    return " ".join(str(exc).split())


DEVICE_HELP = (
    "where the workers train: auto (a GPU when they have one), cpu, cuda or cuda:N "
    "(execution.device; see also execution.precision, channels_last, compile)"
)


def main(argv: list[str] | None = None) -> int:
    """The ``raynas`` command line: runs the command in ``argv`` and returns its exit status (the
    console script runs it through :func:`run`)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    args = _parser().parse_args(argv)
    try:
        commands = {
            "search": _search, "train": _train, "describe": _describe, "report": _report,
            "latency": _latency, "export": _export, "study": _study,
        }
        commands[args.command](args)
    except WorkerLostError as exc:  # not the user's input: a failure to resume from
        print(f"raynas: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except ClusterLostError as exc:  # likewise; and Ray's exit handlers would wait for the head
        print(f"raynas: error: {_one_line(exc)}", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    except RaynasError as exc:
        print(f"raynas: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        what = no_room(exc)
        if what is not None:
            print(f"raynas: error: {what}; make room there (or write elsewhere: tracking.output_dir, "
                  "tracking.tracking_uri) and run the same command again to resume", file=sys.stderr)
            return 2
        what = no_memory(exc)
        if what is None:
            raise
        # (a search resumes where it stopped; with other settings, it says what changed)
        advice = {
            "describe": "give a smaller --channels, --layers or --input-size",
            "export": "run where there is more memory, or give a smaller --input-shape",
            "latency": "give a smaller --batch-size",
        }.get(args.command, "lower data.batch_size or the network's size (the space's channels, layers), "
                            "or run where there is more memory")
        print(f"raynas: error: out of memory: {what}; {advice}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Searches, retrainings and studies resume; the other commands keep nothing to go on from.
        resumes = args.command in ("search", "train", "study")
        again = "; run the same command again to resume" if resumes else ""
        if _stopped_by != signal.SIGINT:  # SIGTERM, SIGUSR1, SIGHUP (the console script's handler)
            print(f"raynas: stopped by {signal.Signals(_stopped_by).name}{again}", file=sys.stderr)
            return 128 + _stopped_by
        print(f"raynas: interrupted{again}", file=sys.stderr)
        return 130
    return 0


_stopped_by: int = signal.SIGINT  # the signal that stopped the command (a KeyboardInterrupt's: Ctrl-C)
_stops = 0  # stop signals (Ctrl-C, SIGTERM, SIGUSR1, SIGHUP) received by the console script


def _stop(signum: int, frame: object) -> None:
    """Ctrl-C, SIGTERM (``ray job stop``, Kubernetes stopping a pod, ``kill``), SIGUSR1 (SLURM's
    warning before it preempts a job) and SIGHUP (its terminal closed) for the console script.
    The first stops the command: a ``KeyboardInterrupt`` in the main thread, so the run is
    recorded as killed, what was done is kept, and the same command resumes (Ray's blocking calls
    raise a new ``KeyboardInterrupt`` of their own when a handler raises in them, so a global says
    which signal it was). The next one, while that stop winds down (the MLflow run's
    end, the local Ray's processes, a second or two), says so in a line and lets it finish: cut
    short, Ray's exit handler printed a traceback and left its processes running for a minute.
    One more ends the process at once.

    A first one while a module is being imported waits for the import to end: torch's first
    import runs its extension's and numpy's initialisation, which catch every error, so an
    interrupt there was lost (the command went on) or left numpy half made (a RecursionError
    at its next use). Pressed again before the import ends, it stops at once."""
    global _stops, _stopped_by, _deferred
    if _stops == 0 and not _deferred and _importing(frame):  # (pressed again, it stops there)
        _deferred = True
        threading.Thread(target=_signal_after_import, args=(signum,), name="raynas-deferred-stop",
                         daemon=True).start()
        return
    _stops += 1
    if _stops == 1:
        _stopped_by = signum
        raise KeyboardInterrupt
    if _stops == 2:
        print("raynas: still stopping (the MLflow run's end, Ray's processes); press Ctrl-C again "
              "to end at once", file=sys.stderr, flush=True)
        return
    sys.stderr.flush()
    os._exit(128 + signum)


_deferred = False  # a first stop waiting for an import to end


def _importing(frame: Any) -> bool:
    """Whether ``frame`` runs inside an import (Python's import machinery is on its stack)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _signal_after_import(signum: int) -> None:
    """Send ``signum`` again once the main thread is out of every import (:func:`_stop`)."""
    global _deferred
    main = threading.main_thread().ident
    while _importing(sys._current_frames().get(main)):
        time.sleep(0.02)
    if _stops == 0:  # not pressed again meanwhile
        _deferred = False  # (sent into another import, it waits again)
        os.kill(os.getpid(), signum)


class _Terminal:
    """A console stream on a terminal whose writes are dropped once the terminal is gone (closed
    with the command running in the background, or after its SIGHUP): the write fails then (EIO),
    and the command would end with that error at its next line instead of going on (a search) or
    stopping as asked (its stop's own line)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError:
            return len(text)

    def flush(self) -> None:
        with contextlib.suppress(OSError):
            self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


EXIT_SECONDS = 60.0
"""How long the exit after a command (the wait for its threads; the exit handlers: Ray's shutdown,
MLflow's and logging's flushes, other libraries') may take before the process ends without it."""


def _exit_within(seconds: float, code: int) -> None:
    """Ends the process with ``code`` if it is still exiting ``seconds`` from now: a library's
    thread or exit handler that never returns (tensorboardX's writers once did) would hold the
    finished command, and a ``ray job`` running it, for good. What the command did is recorded."""
    time.sleep(seconds)
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        print(f"raynas: the command had ended, but its exit still waited on a thread or an exit handler "
              f"after {seconds:.0f} s; ended without it", file=sys.stderr, flush=True)
    os._exit(code)


def run() -> NoReturn:
    """The ``raynas`` console script: :func:`main`, then the exit Python makes (its threads
    joined, its exit handlers run: Ray's shutdown, MLflow's and logging's flushes), but not the
    finalization after it, which frees every module and object one by one: 1.6 s after a search
    on two cores, 0.4 s after ``describe``. An exception :func:`main` does not answer ends the
    process as Python ends it."""
    global _stops
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGUSR1, _stop)  # SLURM's warning before it preempts a job
    if signal.getsignal(signal.SIGHUP) is signal.SIG_DFL:  # (under nohup it stays ignored)
        signal.signal(signal.SIGHUP, _stop)  # the terminal closed
    sys.stdout, sys.stderr = (_Terminal(s) if s is not None and s.isatty() else s
                              for s in (sys.stdout, sys.stderr))
    try:
        code = main()
    except SystemExit as exc:  # argparse: --help (0) and bad arguments (2, its message printed)
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    import atexit

    _stops = max(_stops, 1)  # what is left is stopping: a Ctrl-C now is a second one
    threading.Thread(target=_exit_within, args=(EXIT_SECONDS, code), name="raynas-exit", daemon=True).start()
    # What Python does at exit, in its order: its threads' exit hooks (they wake an executor's
    # idle workers) and the wait for every non-daemon thread, then the exit handlers.
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
