"""Training-free evaluators: zero-cost proxies of a candidate's network at initialisation.

- ``naswot``: Mellor, Turner, Storkey and Crowley, "Neural Architecture Search without Training",
  ICML 2021. Every ReLU unit gives an input a bit (active or not); over all ``N_A`` units of the
  network the input ``x_i`` gets the binary code ``c_i``. On one mini-batch,

      K_H[i, j] = N_A - d_H(c_i, c_j),        s = log |K_H|

  where ``d_H`` is the Hamming distance: networks that tell the inputs of a batch apart by their
  activation patterns have a better-conditioned ``K_H`` and score higher.
- ``ntk``, ``linear_regions``: Chen, Gong and Wang, "Neural Architecture Search on ImageNet in
  Four GPU Hours: A Theoretically Inspired Perspective" (TE-NAS), ICLR 2021, read on the
  candidate's own network. Trainability from the empirical neural tangent kernel on a mini-batch,

      Theta = J J^T,   J[i] = d (sum_k f_k(x_i)) / d theta,   kappa = lambda_max(Theta) / lambda_min(Theta)

  (lower ``kappa`` trains better, so the score to maximise is ``-kappa``); expressivity from the
  number of linear regions ``R``, counted as the number of distinct activation patterns ``c_i``
  among the inputs.
- ``te_nas``: TEG-NAS's three indicators (Chen et al., "Understanding and Accelerating Neural
  Architecture Search with Training-Free and Theory-Grounded Metrics", code VITA-Group/TEGNAS),
  computed as its ``te_reward_generator.py`` does (:mod:`raynas.supernet.teg`): the candidate is the
  tiny supernet of its space (``nb201``, ``darts``) masked to its operations; ``ntk_cond`` the NTK's
  condition number on ``batch_size`` training images, ``linear_regions`` the regions of the thin
  supernet over ``region_batches`` x ``region_inputs`` single-channel crops, ``ntk_mse`` the error of
  NTK kernel regression from those training images to as many validation images. TEG-NAS combines
  the three by their ranks among candidates (the ``teg_evolution``, ``teg_reinforce`` and
  ``teg_nas_prune`` strategies do); a single candidate has no rank, so the ``te_nas`` score is the
  rank-free reading ``log(R) - log(kappa) - log(mse)``, which orders candidates as all three
  indicators do when they agree.

Every score is taken at initialisation (BatchNorm in train mode, as in the papers) on
``batch_size`` images of the search split's training half, the same images for every candidate,
and averaged over ``repeats`` initialisations whose seeds depend only on the search's seed and the
architecture's key. For ``ntk`` and ``linear_regions``, two departures from TE-NAS's code, for one
network and one batch per candidate: regions are counted on the candidate's own network over the
batch (TE-NAS counts them on a one-channel, one-cell network without a stem, over 3,000
single-channel crops of 3x3 pixels, as ``te_nas`` does), so ``R`` is at most ``batch_size`` and
tells apart mostly networks that merge inputs; and every ``nn.ReLU`` is read, not only those of
4-D feature maps.
"""

from __future__ import annotations

import dataclasses
import math
import time
import typing
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import torch
from torch import nn

from raynas.config import Check, Rule, SearchConfig, check_rules
from raynas.data import DATASETS, search_loaders
from raynas.data.base import SearchDataset
from raynas.errors import ConfigError, RaynasError
from raynas.evaluators.nb201_table import SETS as BENCHMARK_SETS
from raynas.evaluators.nb201_table import bench_metrics, entry_of, read_table
from raynas.evaluators.registry import EVALUATORS
from raynas.evaluators.scratch import candidate_seed
from raynas.spaces import SPACES
from raynas.supernet import teg
from raynas.train.accel import pick_device
from raynas.types import Architecture, EvalResult

Proxy = Literal["naswot", "ntk", "linear_regions", "te_nas"]
PROXIES: tuple[str, ...] = typing.get_args(Proxy)
NETWORK_PROXIES = ("naswot", "ntk", "linear_regions")  # read on the candidate's own network


@dataclass(frozen=True)
class TrainingFreeConfig:
    """Which proxy scores candidates, and on how much.

    Attributes:
        proxy: ``naswot``, ``ntk``, ``linear_regions`` or ``te_nas`` (see the module docstring).
        batch_size: Images of the search split's training half the proxy is computed on.
        repeats: Initialisations the proxy is averaged over.
        channels: Initial channels of the network (the space's build default if 0).
        layers: Cells or layers of the network (the space's build default if 0).
        stack: Candidates scored together, one forward (and per-input backward) pass for all,
            where the space can run several networks as one (``nb201``); each gets the scores it
            gets alone (``te_nas`` scores one at a time).
        region_inputs: ``te_nas``: crops per batch of the region count (TEG-NAS's 1,000).
        region_batches: ``te_nas``: batches of crops (TEG-NAS's 3).
        benchmark: NAS-Bench-201's file, or NATS-Bench's topology release, read as the
            ``nb201_table`` evaluator's ``path`` is (``nb201`` cells only): each candidate also records the
            benchmark's accuracies of its cell (``bench_<set>_acc``, :mod:`raynas.evaluators.nb201_table`),
            as NASWOT's ``search.py`` reads the chosen cell's; empty: none.
        benchmark_dataset: The benchmark's dataset those are read for (``cifar10``: its
            ``ori-test``, NASWOT's test accuracy; ``cifar100`` and ``ImageNet16-120``: ``x-valid``
            and ``x-test``; ``cifar10-valid``).
    """

    proxy: Proxy = "naswot"
    batch_size: Annotated[int, Rule(ge=2)] = 64
    repeats: Annotated[int, Rule(ge=1)] = 1
    channels: Annotated[int, Rule(ge=0, says="must be >= 0 (0: the space's default)")] = 0
    layers: Annotated[int, Rule(ge=0, says="must be >= 0 (0: the space's default)")] = 0
    stack: Annotated[int, Rule(ge=1)] = 1
    region_inputs: Annotated[int, Rule(ge=1)] = 1000
    region_batches: Annotated[int, Rule(ge=1)] = 3
    benchmark: str = ""
    benchmark_dataset: Annotated[str, Rule(one_of=tuple(BENCHMARK_SETS))] = "cifar10"

    job_checks: ClassVar[tuple[Check, ...]] = (
        Check(
            "not benchmark or space == 'nb201'",
            "config key 'evaluator.benchmark' reads NAS-Bench-201's accuracies of its cells: set "
            "space.name to 'nb201' (got {space!r}), or leave the benchmark out",
        ),
    )

    def __post_init__(self) -> None:
        if self.proxy not in PROXIES:
            raise ConfigError(
                f"config key 'evaluator.proxy' is {self.proxy!r}; allowed: {', '.join(map(repr, PROXIES))}"
            )
        check_rules(self, "evaluator")


# -- the proxies, on any network ---------------------------------------------------------------


@contextmanager
def hamming_kernel(model: nn.Module) -> Iterator[dict[str, Any]]:
    """Collect NASWOT's ``K_H`` over the forward passes run inside the ``with`` block.

    Every ``nn.ReLU`` call adds its units' agreements, ``c c^T + (1 - c)(1 - c)^T`` for the
    batch's binary codes ``c`` (B, n), so ``K_H[i, j]`` ends as the number of units on which inputs
    ``i`` and ``j`` agree, ``N_A - d_H(c_i, c_j)``, without keeping the codes.

    Yields:
        A dict whose ``"kernel"`` (a (B, B) float64 tensor, ``None`` before a ReLU ran) and
        ``"units"`` (``N_A``) fill in as the model runs.
    """
    found: dict[str, Any] = {"kernel": None, "units": 0}

    def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        code = (output.detach() > 0).flatten(1)  # (B, n): the units' bits
        agree = agreements(code.unsqueeze(0))[0]  # (B, B)
        found["kernel"] = agree if found["kernel"] is None else found["kernel"] + agree
        found["units"] += code.shape[1]

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.ReLU)]
    if not handles:
        raise RaynasError(
            f"{type(model).__name__} has no nn.ReLU: activation-pattern proxies (naswot, "
            "linear_regions) read ReLU units; use proxy 'ntk'"
        )
    try:
        yield found
    finally:
        for handle in handles:
            handle.remove()


def agreements(code: torch.Tensor) -> torch.Tensor:
    """``c c^T + (1 - c)(1 - c)^T`` of binary codes ``c``, (n, B, u) -> (n, B, B) float64: on how
    many of the ``u`` units each pair of inputs agrees.

    One matmul instead of two: ``(1 - c)(1 - c)^T = u - |c_i| - |c_j| + c c^T``. The products
    are counts below 2^24, exact in float32 (half the work of float64).
    """
    c = code.float()
    ones = c.sum(2)  # (n, B): active units of each input
    agree = 2 * (c @ c.transpose(1, 2)) - ones[:, :, None] - ones[:, None, :] + c.shape[2]  # (n, B, B)
    return agree.double()


def naswot_score(kernel: torch.Tensor) -> float:
    """NASWOT's score ``s = log |K_H|`` (the log of the absolute determinant, as the authors'
    ``slogdet``); ``-inf`` when ``K_H`` is singular (two inputs share a code).

    Args:
        kernel: ``K_H``, (B, B).
    """
    sign, logdet = torch.linalg.slogdet(kernel.double().cpu())
    return float(logdet) if sign != 0 else float("-inf")


def linear_regions(kernel: torch.Tensor, units: int) -> int:
    """TE-NAS's number of linear regions ``R``: the distinct activation patterns among the batch.

    Inputs ``i`` and ``j`` share a pattern exactly when ``K_H[i, j] = N_A``; ``R`` is the sum over
    inputs of one over the number of inputs sharing its pattern (TE-NAS's ``calc_LR``).

    Args:
        kernel: ``K_H``, (B, B), from :func:`hamming_kernel`.
        units: ``N_A``.
    """
    same = (kernel.double().cpu() == units).double()  # (B, B)
    return round(float((1.0 / same.sum(dim=1)).sum()))


def ntk_jacobian(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The rows ``J[i] = d (sum_k f_k(x_i)) / d theta`` of TE-NAS's NTK, theta being the network's
    weights (parameters named ``*weight``, biases left out, as TE-NAS's ``get_ntk_n``).

    One forward pass of the whole batch (BatchNorm couples its inputs, as in TE-NAS), then one
    backward pass per input.

    Args:
        model: The network; its output is the logits (or a tuple that starts with them).
        inputs: The batch, (B, ...).

    Returns:
        J, (B, P).
    """
    weights = [p for name, p in model.named_parameters() if p.requires_grad and name.endswith("weight")]
    logits = _logits(model(inputs))  # (B, K)
    return _jacobian_rows(logits, weights)


def ntk_condition_number(jacobian: torch.Tensor) -> float:
    """``kappa = lambda_max(Theta) / lambda_min(Theta)`` of ``Theta = J J^T``; ``inf`` when Theta
    is singular (``lambda_min <= 0`` in float64).

    Args:
        jacobian: J, (B, P).
    """
    jac = jacobian.double()
    eig = torch.linalg.eigvalsh((jac @ jac.T).cpu())  # (B,), ascending
    if not bool(torch.isfinite(eig).all()) or eig[0] <= 0:
        return float("inf")
    return float(eig[-1] / eig[0])


def te_nas_score(condition_number: float, regions: float, mse: float) -> float:
    """The rank-free reading of TEG-NAS's rank sum: ``log(R) - log(kappa) - log(mse)``."""
    if not (math.isfinite(condition_number) and math.isfinite(mse)) or regions <= 0 or mse <= 0:
        return float("-inf")
    return math.log(regions) - math.log(condition_number) - math.log(mse)


def proxy_values(model: nn.Module, inputs: torch.Tensor, proxy: str) -> dict[str, float]:
    """The raw quantities a proxy needs from one initialised network (one forward pass, and one
    backward pass per input for the NTK): ``naswot`` (log |K_H|), ``ntk_cond`` (kappa),
    ``linear_regions`` (R).

    Args:
        model: The network, in the mode it is scored in (train: batch statistics).
        inputs: The batch, (B, ...), on the model's device.
        proxy: A name in :data:`PROXIES`.
    """
    if proxy not in NETWORK_PROXIES:
        raise ValueError(f"proxy {proxy!r} is not read on a network; choose: {', '.join(NETWORK_PROXIES)}")
    values: dict[str, float] = {}
    if proxy == "ntk":
        values["ntk_cond"] = ntk_condition_number(ntk_jacobian(model, inputs))
        return values
    with hamming_kernel(model) as found, torch.no_grad():
        model(inputs)
    kernel, units = found["kernel"], found["units"]
    if kernel is None:
        raise RaynasError(f"no nn.ReLU of {type(model).__name__} ran on the batch")
    if proxy == "naswot":
        values["naswot"] = naswot_score(kernel)
    else:
        values["linear_regions"] = float(linear_regions(kernel, units))
    return values


def stacked_proxy_values(
    stack: Callable[..., nn.Module], networks: Sequence[nn.Module], inputs: torch.Tensor, proxy: str
) -> list[dict[str, float]]:
    """:func:`proxy_values` of every network in ``networks``, computed together: one forward pass
    of the networks stacked by ``stack`` (a space's ``stack``) and, for the NTK, one backward pass
    per input for all of them.

    Args:
        stack: Builds the stacked module from ``(networks, on_relu)``; its output is (B, N, K).
        networks: The candidates' initialised networks, in train mode.
        inputs: The batch, (B, ...).
        proxy: A name in :data:`PROXIES`.
    """
    if proxy not in NETWORK_PROXIES:
        raise ValueError(f"proxy {proxy!r} is not read on a network; choose: {', '.join(NETWORK_PROXIES)}")
    n, batch = len(networks), inputs.shape[0]
    kernels = torch.zeros(n, batch, batch, dtype=torch.float64, device=inputs.device)
    units = torch.zeros(n, dtype=torch.long, device=inputs.device)

    def on_relu(out: torch.Tensor, candidates: torch.Tensor) -> None:
        code = (out.detach() > 0).view(batch, len(candidates), -1).transpose(0, 1)  # (n, B, u)
        kernels.index_add_(0, candidates, agreements(code))
        units.index_add_(0, candidates, torch.full_like(candidates, code.shape[2]))

    needs_codes = proxy != "ntk"
    model = stack(networks, on_relu if needs_codes else None)
    values: list[dict[str, float]] = [{} for _ in networks]
    if proxy == "ntk":
        weights = [[p for name, p in net.named_parameters() if p.requires_grad and name.endswith("weight")]
                   for net in networks]
        logits = model(inputs)  # (B, N, K)
        rows: list[list[torch.Tensor]] = [[] for _ in networks]
        flat = [w for ws in weights for w in ws]
        for i in range(batch):
            grads = torch.autograd.grad(logits[i].sum(), flat, retain_graph=True, allow_unused=True)
            start = 0
            for k, ws in enumerate(weights):
                part = grads[start:start + len(ws)]
                rows[k].append(torch.cat([g.reshape(-1) for g in part if g is not None]))  # (P_k,)
                start += len(ws)
        for k in range(n):
            values[k]["ntk_cond"] = ntk_condition_number(torch.stack(rows[k]))
    else:
        with torch.no_grad():
            model(inputs)
    if needs_codes:
        for k in range(n):
            if int(units[k]) == 0:
                raise RaynasError(f"no nn.ReLU of {type(networks[k]).__name__} ran on the batch")
            if proxy == "naswot":
                values[k]["naswot"] = naswot_score(kernels[k])
            elif proxy == "linear_regions":
                values[k]["linear_regions"] = float(linear_regions(kernels[k], int(units[k])))
    return values


def proxy_scores(values: dict[str, float], proxy: str) -> dict[str, float]:
    """The metrics of a candidate from its (averaged) raw values: the score to maximise under the
    proxy's name (``ntk``: ``-kappa``; ``te_nas``: ``log(R) - log(kappa) - log(mse)``) and its parts."""
    metrics = dict(values)
    if proxy == "ntk":
        metrics["ntk"] = -values["ntk_cond"]
    elif proxy == "te_nas":
        metrics["te_nas"] = te_nas_score(values["ntk_cond"], values["linear_regions"], values["ntk_mse"])
    return metrics


def proxy_batch(dataset: SearchDataset, *, seed: int, size: int) -> torch.Tensor:
    """The first ``size`` images of the search split's training half in the order the search's
    loader (seeded by ``seed``) draws them, not augmented (the NASWOT code scores with
    ``--augtype none``): the same images for every candidate of a search.

    Raises:
        ConfigError: The training half holds fewer than ``size`` images.
    """
    if getattr(dataset.config, "augment", False):
        dataset = type(dataset)(dataclasses.replace(dataset.config, augment=False))  # type: ignore[call-arg]
    train_loader, _ = search_loaders(dataset, seed=seed)
    available = len(train_loader.dataset)  # type: ignore[arg-type]
    if available < size:
        raise ConfigError(
            f"evaluator.batch_size ({size}) is more than the {available} images of the search "
            "split's training half; lower it or use more data"
        )
    images: list[torch.Tensor] = []
    with _seeded(seed):  # random training transforms draw from torch's stream
        for x, _ in train_loader:
            images.append(x)
            if sum(len(b) for b in images) >= size:
                break
    return torch.cat(images)[:size]  # (size, C, H, W)


def teg_batch(
    dataset: SearchDataset, shape: teg.CellShape, config: TrainingFreeConfig, *, seed: int
) -> teg.TegBatch:
    """``te_nas``'s inputs: the first ``batch_size`` images and labels of each half of the search
    split in the order the search's loaders (seeded by ``seed``) draw them, and the region crops,
    drawn from the training half's images (as many as the crops, or all) by a stream seeded by
    ``seed``."""
    halves = []
    crops_from: list[torch.Tensor] = []
    wanted = config.region_inputs * config.region_batches
    with _seeded(seed):
        for k, loader in enumerate(search_loaders(dataset, seed=seed)):
            xs, ys = [], []
            for x, y in loader:
                xs.append(x)
                ys.append(y)
                if sum(len(b) for b in xs) >= (config.batch_size if k else max(config.batch_size, wanted)):
                    break
            if sum(len(b) for b in xs) < config.batch_size:
                raise ConfigError(
                    f"evaluator.batch_size ({config.batch_size}) is more than the images of a half "
                    "of the search split; lower it or use more data"
                )
            halves.append((torch.cat(xs), torch.cat(ys)))
            if not k:
                crops_from = [halves[0][0]]
    (x, y), (vx, vy) = halves
    n = config.batch_size
    crops = teg.region_crops(
        crops_from[0], size=config.region_inputs, batches=config.region_batches, side=shape.crop,
        generator=torch.Generator().manual_seed(seed),
    )
    return teg.TegBatch(x=x[:n], y=y[:n], valid_x=vx[:n], valid_y=vy[:n], crops=crops,
                        num_classes=shape.num_classes)


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Run the block under ``seed``, leaving the caller's random streams (CPU and CUDA) as they were."""
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        torch.manual_seed(seed)
        yield


def _logits(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out  # networks with an auxiliary head


def _jacobian_rows(logits: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
    rows = []
    for i in range(logits.shape[0]):
        grads = torch.autograd.grad(logits[i].sum(), weights, retain_graph=True, allow_unused=True)
        rows.append(torch.cat([g.reshape(-1) for g in grads if g is not None]))  # (P,)
    return torch.stack(rows)  # (B, P)


# -- the evaluator -----------------------------------------------------------------------------


@EVALUATORS.register("training_free", config=TrainingFreeConfig)
class TrainingFreeEvaluator:
    """Scores each candidate's stand-alone network at initialisation with a zero-cost proxy.

    Args:
        config: The proxy and its batch.
        search: The search job (space, data, seed).
    """

    def __init__(self, config: TrainingFreeConfig, *, search: SearchConfig) -> None:
        self.config = config
        self.search = search
        self.space = SPACES.create(search.space.name, search.space.config)
        self.data = DATASETS.create(search.data.name, search.data.config)
        self.device = pick_device(search.execution.device)
        self.inputs = proxy_batch(self.data, seed=search.seed, size=config.batch_size).to(self.device)
        self.teg: tuple[teg.CellShape, teg.TegBatch] | None = None
        self.benchmark = None if not config.benchmark else read_table(
            config.benchmark, config.benchmark_dataset, 200, setting="evaluator.benchmark"
        )
        if config.proxy == "te_nas":
            shape = teg.CellShape.of_space(self.space, self.data.info)
            self.teg = (shape, teg_batch(self.data, shape, config, seed=search.seed))

    def seed(self, arch: Architecture, repeat: int = 0) -> int:
        """The seed of ``arch``'s ``repeat``-th initialisation: (search seed, architecture key) only."""
        return candidate_seed(self.search.seed, arch) + repeat

    def build(self, arch: Architecture, *, repeat: int = 0) -> nn.Module:
        """``arch``'s network in its ``repeat``-th initialisation, in train mode (BatchNorm on
        batch statistics, as in the papers)."""
        cfg = self.config
        with _seeded(self.seed(arch, repeat)):
            model = self.space.build(
                arch, self.data.info, channels=cfg.channels or None, layers=cfg.layers or None
            )
        return model.to(self.device).train()

    def teg_values(self, arch: Architecture, repeat: int) -> dict[str, float]:
        """``te_nas``'s indicators of ``arch`` in its ``repeat``-th initialisation: its space's tiny
        supernets masked to its operations (:func:`raynas.supernet.teg.indicators`)."""
        assert self.teg is not None
        shape, batch = self.teg
        with _seeded(self.seed(arch, repeat)):
            ntk_net, thin_net = teg.build_networks(shape)
        found = teg.indicators(ntk_net, thin_net, teg.arch_masks(shape, arch), batch)
        return {"ntk_cond": found["ntk"], "linear_regions": found["region"], "ntk_mse": found["mse"]}

    def evaluate(self, arch: Architecture, *, trial_id: str = "") -> EvalResult:
        """Score ``arch``: the proxy's metrics averaged over ``repeats`` initialisations, the
        seconds its passes took (``proxy_seconds``) and the network's ``params``."""
        return self.evaluate_many([arch], trial_ids=[trial_id])[0]

    def evaluate_many(self, archs: Sequence[Architecture], *, trial_ids: Sequence[str]) -> list[EvalResult]:
        """Score ``archs`` as :meth:`evaluate` scores each, ``config.stack`` of them per pass where
        the space can stack networks (a space without ``stack`` scores them one by one). Each
        result's ``seconds`` and ``proxy_seconds`` are its share of the time its passes took."""
        start = time.perf_counter()
        proxy = self.config.proxy
        size = self.config.stack if hasattr(self.space, "stack") and self.teg is None else 1
        runs: list[list[dict[str, float]]] = [[] for _ in archs]
        params = [0.0] * len(archs)
        passes = [0.0] * len(archs)
        for first in range(0, len(archs), size):
            group = range(first, min(first + size, len(archs)))
            for repeat in range(self.config.repeats):
                models = [self.build(archs[i], repeat=repeat) for i in group]
                for i, model in zip(group, models, strict=True):
                    params[i] = float(sum(p.numel() for p in model.parameters()))
                tic = time.perf_counter()
                if self.teg is not None:
                    values = [self.teg_values(archs[first], repeat)]
                elif len(models) == 1:
                    with _seeded(self.seed(archs[first], repeat)):  # any randomness of the forward pass too
                        values = [proxy_values(models[0], self.inputs, proxy)]
                else:
                    values = stacked_proxy_values(self.space.stack, models, self.inputs, proxy)
                share = (time.perf_counter() - tic) / len(models)
                for i, value in zip(group, values, strict=True):
                    runs[i].append(value)
                    passes[i] += share
        seconds = (time.perf_counter() - start) / len(archs)
        results = []
        for arch, trial_id, run, param, spent in zip(archs, trial_ids, runs, params, passes, strict=True):
            mean = {key: sum(r[key] for r in run) / len(run) for key in run[0]}
            metrics = {**proxy_scores(mean, proxy), "proxy_seconds": spent, "params": param}
            if self.benchmark is not None:
                cfg = self.config
                entry = entry_of(self.benchmark, arch, path=cfg.benchmark, dataset=cfg.benchmark_dataset)
                metrics.update(bench_metrics(entry))
            results.append(EvalResult(
                architecture=arch, metrics=metrics, objective=proxy, trial_id=trial_id, budget=0.0,
                seconds=seconds,
            ))
        return results
