"""Run a search over the tiny_cnn space with raynas's public API.

    python examples/custom_space/search.py examples/custom_space/job.yaml [--set key=value ...]

Importing :mod:`tiny_cnn` registers the space; after that the job file may name it like any
built-in space.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tiny_cnn  # noqa: F401  (registers the "tiny_cnn" space)

from raynas.runs import run_search
from raynas.runs.jobs import load_job


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job", nargs="?", default=str(Path(__file__).with_name("job.yaml")))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    config = load_job(args.job, args.overrides)
    result = run_search(config, fresh=True)
    print(f"Found {result.architecture} ({result.params:,} parameters on {config.data.name}); "
          f"valid accuracy {result.metrics['valid_acc']:.1%}; MLflow run {result.run_id}")


if __name__ == "__main__":
    main()
