"""Auto-Keras's Bayesian optimisation over network morphisms (Jin, Song and Hu, "Auto-Keras: An
Efficient Neural Architecture Search System", KDD 2019; code: keras-team/autokeras 0.2-0.3
``bayesian.py``, ported to microsoft/nni as ``networkmorphism_tuner/bayesian.py``).

- **Edit distance** (Sec. 3.1): ``d(f_a, f_b) = D_l(L_a, L_b) + lambda D_s(S_a, S_b)``. ``D_l``
  matches the two chains of layers by dynamic programming (insert or delete 1, substitute the
  layers' distance: 1 between types, the mean relative difference of filters, kernel and stride
  between convolutions, 0 between other layers of one type); ``D_s`` matches the skip
  connections by the Hungarian algorithm (a pair's distance: 1 between kinds, else
  ``(|u_a - u_b| + |len_a - len_b|) / (max(u_a, u_b) + max(len_a, len_b))``) plus one per
  unmatched skip.
- **Kernel**: ``kappa = exp(-rho^2(d))``, ``rho`` the Bourgain embedding of the distances into a
  Euclidean space, which makes the kernel valid (Sec. 3.1).
- **Gaussian process** on the networks evaluated, and the UCB acquisition
  ``mean + beta * std`` (beta = 2.576, the official Constant.BETA).
- **Tree-structured acquisition optimisation** (Algorithm 1): simulated annealing over the tree
  of morphisms rooted at the evaluated networks: a priority queue of networks, the best popped
  and expanded (its neighbours scored by the acquisition) with probability
  ``exp(min((c - c_opt) / T, 1))``, ``T`` cooled by 0.9 from 1 to ``t_min``; the answer is the
  best network met and the evaluated network it was grown from, with the morphisms between.

The strategy asks for the space's seed network first, then for the network the acquisition
optimisation finds, grown from its parent: the record carries the parent's key and the
morphisms, so the ``morphism`` evaluator starts it from the parent's trained weights.
"""

from __future__ import annotations

import functools
import heapq
import math
from dataclasses import dataclass, replace
from typing import Annotated, Any, ClassVar

import numpy as np

from raynas.config import Check, Rule, check_rules
from raynas.errors import ConfigError
from raynas.strategies.registry import STRATEGIES
from raynas.strategies.sampling.base import SamplingStrategy
from raynas.types import Architecture, EvalResult, scores_at_common_budget

# --- the edit distance ------------------------------------------------------------------------

Layer = tuple[Any, ...]  # ("conv", filters, kernel, stride), ("bn",), ("relu",)
SkipLink = tuple[int, int, str]  # (node it leaves, node it joins, kind) along the main chain
Descriptor = tuple[tuple[Layer, ...], tuple[SkipLink, ...]]


def descriptor(arch: Any) -> Descriptor:
    """A network's main chain of layers and its skip connections, as the official
    ``extract_descriptor`` lists them: each block is a convolution, a BatchNorm and a ReLU
    (chain nodes 3b, 3b+1, 3b+2 are their inputs, 3b+3 the block's output), and a skip from
    block ``a`` into block ``b`` leaves node ``3a + 3`` and joins node ``3b + 2`` (before b's ReLU)."""
    layers: list[Layer] = []
    for block in arch.blocks:
        layers += [("conv", block.width, block.kernel, block.stride), ("bn",), ("relu",)]
    links = tuple((3 * s.start + 3, 3 * s.end + 2, s.kind) for s in arch.skips)
    return tuple(layers), links


def layer_distance(a: Layer, b: Layer) -> float:
    """1 between layers of two types; between convolutions the mean over filters, kernel size and
    stride of ``|x - y| / max(x, y)``; 0 between other layers of one type."""
    if a[0] != b[0]:
        return 1.0
    if a[0] == "conv":
        return sum(abs(x - y) / max(x, y) for x, y in zip(a[1:], b[1:], strict=True)) / 3
    return 0.0


def layers_distance(list_a: tuple[Layer, ...], list_b: tuple[Layer, ...]) -> float:
    """``D_l``: the edit distance of two chains (insert or delete 1, substitute the layers' distance)."""
    cost = [[layer_distance(a, b) if a != b else 0.0 for b in list_b] for a in list_a]
    previous = [float(j) for j in range(len(list_b) + 1)]  # row i - 1 of the table (plain floats: fast)
    for i, costs in enumerate(cost, 1):
        row = [float(i)]
        for j, c in enumerate(costs):
            row.append(min(row[j] + 1, previous[j + 1] + 1, previous[j] + c))
        previous = row
    return previous[-1]


def skip_distance(a: SkipLink, b: SkipLink) -> float:
    """Two skips' distance: 1 between kinds, else by where they start and how far they reach."""
    if a[2] != b[2]:
        return 1.0
    len_a, len_b = abs(a[1] - a[0]), abs(b[1] - b[0])
    return (abs(a[0] - b[0]) + abs(len_a - len_b)) / (max(a[0], b[0]) + max(len_a, len_b))


def skips_distance(list_a: tuple[SkipLink, ...], list_b: tuple[SkipLink, ...]) -> float:
    """``D_s``: the skips matched by the Hungarian algorithm, plus one per skip left unmatched."""
    from scipy.optimize import linear_sum_assignment  # scipy loads in a second: only when searching

    cost = np.array([[skip_distance(a, b) for b in list_b] for a in list_a])
    cost = cost.reshape(len(list_a), len(list_b))
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].sum()) + abs(len(list_a) - len(list_b))


def edit_distance(a: Any, b: Any, kernel_lambda: float = 1.0) -> float:
    """``d(f_a, f_b) = D_l + lambda D_s`` between two networks (or their :func:`descriptor`)."""
    first = a if isinstance(a, tuple) else descriptor(a)
    second = b if isinstance(b, tuple) else descriptor(b)
    return _edit_distance(first, second, kernel_lambda)


@functools.lru_cache(maxsize=200_000)
def _edit_distance(a: Descriptor, b: Descriptor, kernel_lambda: float) -> float:
    # Cached: the annealing compares every candidate with the same evaluated networks.
    return layers_distance(a[0], b[0]) + kernel_lambda * skips_distance(a[1], b[1])


def distance_matrix(xs: list[Any], ys: list[Any] | None = None, kernel_lambda: float = 1.0) -> np.ndarray:
    """Edit distances between the descriptors ``xs`` and ``ys`` (``xs`` among themselves)."""
    if ys is None:
        n = len(xs)
        out = np.zeros((n, n))
        for i in range(n):
            for j in range(i + 1, n):
                out[i, j] = out[j, i] = edit_distance(xs[i], xs[j], kernel_lambda)
        return out
    return np.array([[edit_distance(x, y, kernel_lambda) for y in ys] for x in xs]).reshape(len(xs), len(ys))


def bourgain_kernel(distances: np.ndarray) -> np.ndarray:
    """``exp(-rho^2)`` of the networks whose edit distances are ``distances`` (n, n), ``rho`` the
    distances after Bourgain's embedding, as the official ``bourgain_embedding_matrix``: for
    scales ``i = 0..ceil(log2 n - 1)``, repeatedly draw ``2^i`` networks (numpy's RandomState(123),
    with replacement) and take each network's distance to the nearest drawn one as a coordinate;
    then scikit-learn's ``rbf_kernel`` of those vectors (``gamma`` = 1 / coordinates).

    Scale ``i`` is drawn ``ceil(ln n) - i`` times: the official loop reuses ``t`` as the loop
    variable of its inner ``for t in range(t)``, which shortens each later scale by one; this
    follows what that code computes. For one network the official function returns the distance
    matrix itself ([[0]], a kernel of 0); here it is [[1]], the kernel of a network with itself.
    """
    n = len(distances)
    if n == 1:
        return np.ones((1, 1))
    rng = np.random.RandomState(123)
    scales, repeats = math.ceil(math.log(n) / math.log(2) - 1), math.ceil(math.log(n))
    columns = []
    for i in range(scales + 1):
        for _ in range(max(repeats - i, 0)):
            chosen = rng.choice(n, 2**i)
            columns.append(distances[:, chosen].min(1))
    embedded = np.stack(columns, 1)  # (n, coordinates)
    squared = ((embedded[:, None, :] - embedded[None, :, :]) ** 2).sum(-1)
    return np.exp(-squared / embedded.shape[1])


class GaussianProcess:
    """The official ``IncrementalGaussianProcess``: the Bourgain kernel among the networks
    evaluated (``alpha`` = 1e-10 on its diagonal), ``exp(-d^2)`` between a new network and them.

    Args:
        kernel_lambda: ``lambda``, the weight of the skip connections' distance.
    """

    alpha = 1e-10

    def __init__(self, *, kernel_lambda: float = 1.0) -> None:
        self.kernel_lambda = kernel_lambda
        self.x: list[Any] = []
        self.y = np.zeros(0)
        self.weights = np.zeros(0)
        self.k_inv = np.zeros((0, 0))

    def fit(self, xs: list[Any], ys: list[float]) -> None:
        """Condition on the descriptors ``xs`` and their scores ``ys``."""
        from scipy.linalg import LinAlgError, cho_solve, cholesky

        self.x, self.y = list(xs), np.asarray(ys, dtype=float)
        k = bourgain_kernel(distance_matrix(self.x, kernel_lambda=self.kernel_lambda))
        jitter = self.alpha
        while True:  # the official incremental fit drops a point whose Cholesky fails; this adds jitter
            try:
                chol = cholesky(k + jitter * np.eye(len(k)), lower=True)
                break
            except LinAlgError:
                jitter *= 10
        self.weights = cho_solve((chol, True), self.y)
        self.k_inv = cho_solve((chol, True), np.eye(len(k)))  # (n, n), as the official predict forms it

    def predict(self, xs: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        """The posterior mean and standard deviation at the descriptors ``xs``."""
        k_star = np.exp(-distance_matrix(xs, self.x, self.kernel_lambda) ** 2)  # (m, n)
        # einsum, not BLAS: these matrices are tiny, and BLAS threads only add waiting.
        mean = np.einsum("mn,n->m", k_star, self.weights)
        var = np.clip(1.0 - np.einsum("mi,ij,mj->m", k_star, self.k_inv, k_star), 0.0, None)
        return mean, np.sqrt(var)


# --- the strategy -----------------------------------------------------------------------------


@dataclass(frozen=True)
class AutoKerasStrategyConfig:
    """Auto-Keras's search (defaults: the official Constant).

    Attributes:
        evaluations: Networks evaluated in all, the seed included.
        beta: UCB's weight on the standard deviation (BETA 2.576).
        kernel_lambda: ``lambda``, the weight of the skips' distance (KERNEL_LAMBDA 1.0).
        t_min: The temperature at which simulated annealing stops (T_MIN 1e-4).
        cooling: The temperature's factor after each popped network (0.9 in ``generate``).
        neighbours: Morphisms tried per expanded network (N_NEIGHBOURS 8).
    """

    evaluations: Annotated[int, Rule(ge=1)] = 50
    beta: Annotated[float, Rule(ge=0)] = 2.576
    kernel_lambda: Annotated[float, Rule(ge=0)] = 1.0
    t_min: Annotated[float, Rule(gt=0, lt=1)] = 1e-4
    cooling: Annotated[float, Rule(gt=0, lt=1)] = 0.9
    neighbours: Annotated[int, Rule(ge=1)] = 8

    job_checks: ClassVar[tuple[Check, ...]] = (
        Check(
            "space_is['morphisms']",
            "strategy 'autokeras' grows networks by morphisms: set space.name to 'autokeras' "
            "(got {space!r})",
        ),
    )

    def __post_init__(self) -> None:
        check_rules(self, "strategy")


@STRATEGIES.register("autokeras", config=AutoKerasStrategyConfig)
class AutoKeras(SamplingStrategy):
    """Bayesian optimisation with the edit-distance kernel over morphisms of evaluated networks.

    Args:
        config: Budget, UCB and annealing settings.
        space: A space of networks grown by morphisms (the ``autokeras`` space).
        seed: Seeds the morphisms drawn.
    """

    name = "autokeras"
    needs_choices = False

    def __init__(self, config: AutoKerasStrategyConfig, *, space: Any, seed: int = 0) -> None:
        if not all(hasattr(space, m) for m in ("seed_architecture", "neighbours")):
            raise ConfigError(
                f"strategy 'autokeras' grows networks by morphisms: set space.name to 'autokeras' "
                f"(got a {type(space).__name__})"
            )
        super().__init__(space=space, seed=seed)
        self.config = config
        self.exhausted = False  # the annealing found no network not asked before

    def _asked_keys(self) -> set[str]:
        return {r.architecture.key() for r in self.history} | {a.key() for a in self.in_flight}

    def propose(self) -> Architecture | None:
        if self.asked >= self.config.evaluations or self.exhausted:
            return None
        if self.asked == 0:
            return self.space.seed_architecture()
        scored = [r for r in self.history if math.isfinite(r.score)]
        if not scored:
            if self.in_flight:
                return None  # wait for the seed
            for _ in range(20):  # the seed failed: a network trained from scratch
                arch = self.space.sample(self.rng)
                if arch.key() not in self._asked_keys():
                    return arch
            self.exhausted = True
            return None
        found = self.generate(scored)
        if found is None:
            self.exhausted = not self.in_flight
        return found

    def generate(self, scored: list[EvalResult]) -> Architecture | None:
        """Algorithm 1: simulated annealing over the morphism tree rooted at the evaluated networks;
        the best network by UCB, with its parent and the morphisms from it (None if none is new)."""
        cfg = self.config
        gp = GaussianProcess(kernel_lambda=cfg.kernel_lambda)
        # Scores at the budget every evaluated network reached (a Tune scheduler may stop some).
        ys = scores_at_common_budget(scored)
        gp.fit([descriptor(r.architecture) for r in scored], ys)
        seen = self._asked_keys()
        # (-value, order, parent, morphs, network): the largest value first, ties in insertion order
        queue: list[tuple[float, int, Any, tuple[Any, ...], Any]] = []
        for y, r in sorted(zip(ys, scored, strict=True), key=lambda pair: pair[0]):
            heapq.heappush(queue, (-y, len(queue), r.architecture, (), r.architecture.graph()))
        counter = len(queue)
        t, best_acq, best = 1.0, -math.inf, None
        while queue and t > cfg.t_min:
            value, _, parent, morphs, network = heapq.heappop(queue)
            if math.exp(min((-value - best_acq) / t, 1.0)) >= self.rng.uniform(0, 1):
                children = [(m, c) for m, c in self.space.neighbours(network, self.rng, cfg.neighbours)
                            if c.key() not in seen]
                if children:
                    mean, std = gp.predict([descriptor(c) for _, c in children])
                    for (m, child), acq in zip(children, mean + cfg.beta * std, strict=True):
                        if child.key() in seen:  # drawn twice in this expansion
                            continue
                        seen.add(child.key())
                        heapq.heappush(queue, (-float(acq), counter, parent, (*morphs, m), child))
                        counter += 1
                        if acq > best_acq:
                            best_acq, best = float(acq), (parent, (*morphs, m), child)
            t *= cfg.cooling
        if best is None:
            return None
        parent, morphs, child = best
        return replace(child, parent=parent.key(), morphs=morphs)

    @property
    def done(self) -> bool:
        settled = not self.in_flight
        return len(self.history) >= self.config.evaluations or (self.exhausted and settled)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "exhausted": self.exhausted}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.exhausted = bool(state["exhausted"])


__all__ = [
    "AutoKeras", "AutoKerasStrategyConfig", "GaussianProcess", "bourgain_kernel", "descriptor",
    "distance_matrix", "edit_distance", "layer_distance", "layers_distance", "skip_distance",
    "skips_distance",
]
