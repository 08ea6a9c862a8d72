"""Training-free scoring throughput: NAS-Bench-201 candidates per second at CIFAR size, one
candidate per pass against ``--stack`` candidates per pass (``evaluator.stack``).

Each case scores the same ``--candidates`` random cells the way the training-free evaluator does:
build the benchmark's network (16 channels, 5 cells per stage, 10 classes) under its seed, then
the proxy on one batch of ``--batch-size`` 32x32 images in train mode (``naswot``: one forward
pass; ``ntk``, TE-NAS's NTK condition number: one forward pass and one backward pass per
image). The stacked case runs the candidates' networks as one
(:class:`raynas.spaces.nb201.StackedTinyNetwork`) and checks that every score equals the
one-by-one score. Network building is counted in both. Usage::

    python benchmarks/training_free.py                      # naswot and ntk, 16 candidates
    python benchmarks/training_free.py --proxies naswot --candidates 64 --stack 16 --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from typing import Any

import torch

from raynas.evaluators.training_free import proxy_values, stacked_proxy_values
from raynas.spaces.nb201 import Nb201Space
from raynas.types import DatasetInfo

CIFAR = DatasetInfo(name="cifar10", in_channels=3, num_classes=10, image_size=32)


def score(proxy: str, archs: list[Any], inputs: torch.Tensor, stack: int) -> tuple[list[float], float]:
    """Every candidate's raw proxy value, and the seconds the whole set took (networks built on
    the inputs' device)."""
    space = Nb201Space()
    key = "naswot" if proxy == "naswot" else "ntk_cond"
    values: list[float] = []
    start = time.perf_counter()
    for first in range(0, len(archs), stack):
        nets = []
        for i, arch in enumerate(archs[first:first + stack]):
            torch.manual_seed(first + i)
            nets.append(space.build(arch, CIFAR).to(inputs.device).train())
        if stack == 1:
            values.append(proxy_values(nets[0], inputs, proxy)[key])
        else:
            values += [v[key] for v in stacked_proxy_values(space.stack, nets, inputs, proxy)]
    if inputs.device.type == "cuda":
        torch.cuda.synchronize(inputs.device)
    return values, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proxies", default="naswot,ntk", help="network proxies: naswot, ntk")
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--stack", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")
    parser.add_argument("--device", default="cpu", help="where the networks score (cpu, cuda)")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = random.Random(0)
    space = Nb201Space()
    archs = [space.sample(rng) for _ in range(args.candidates)]
    inputs = torch.randn(args.batch_size, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    inputs = inputs.to(args.device)
    rows = []
    for proxy in args.proxies.split(","):
        score(proxy, archs[:2], inputs, 1)  # warm-up: first-call allocations
        alone, t1 = score(proxy, archs, inputs, 1)
        together, tn = score(proxy, archs, inputs, args.stack)
        same = all(math.isclose(a, b, rel_tol=1e-6) or a == b for a, b in zip(alone, together, strict=True))
        rows.append({
            "proxy": proxy, "device": args.device, "candidates": args.candidates,
            "batch_size": args.batch_size,
            "one_per_pass": round(args.candidates / t1, 2),
            f"stack_{args.stack}": round(args.candidates / tn, 2),
            "speedup": round(t1 / tn, 2), "same_scores": same,
        })
        print(f"{proxy:7s} candidates/s: one per pass {args.candidates / t1:7.2f}, "
              f"{args.stack} per pass {args.candidates / tn:7.2f} ({t1 / tn:.2f}x), same scores: {same}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=1)
    return 0 if all(r["same_scores"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
