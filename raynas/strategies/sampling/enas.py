"""ENAS: an LSTM controller trained with REINFORCE over a weight-sharing supernet (Pham et al.,
"Efficient Neural Architecture Search via Parameter Sharing", ICML 2018).

The controller emits the space's decisions one after another: at each step the LSTM's output goes
through that decision's linear head to logits, divided by a temperature and squashed by
``tanh_constant * tanh(.)`` (the paper's PTB settings: temperature 5, tanh constant 2.5), an option
is sampled, and that option's embedding is the next step's input. It is trained with REINFORCE:

    loss = -(R - b) * log p(a) - w * H(p)

where ``R`` is the candidate's score (inherited-weight validation accuracy in ENAS), ``b`` a moving
average of past rewards (decay 0.99), ``H`` the entropy of the controller's distributions along the
sampled sequence and ``w`` its weight (1e-4), with Adam at 3.5e-4; LSTM size 64 as in the authors'
code (``melodyguan/enas``). The defaults are those of ``papers.json["enas"]``.

The search interleaves two kinds of training, as in the paper: the shared child (the supernet) is
trained on paths sampled from the policy (:meth:`Enas.sample_path`), and after each child epoch
``controller_steps`` controller steps of ``controller_batch`` candidates each are evaluated
(:attr:`Enas.evaluations_per_epoch`). After ``controller_epochs`` such epochs the final phase
derives: ``derive_samples`` architectures are sampled from the policy and the best one wins.

Nothing is kept per ask but the architecture (what the base records for candidates in flight):
a controller step recomputes the log-probabilities of its batch's actions under the current
policy, so a candidate asked again after a resume is learnt from exactly as it would have been.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from raynas.errors import ConfigError
from raynas.strategies.registry import STRATEGIES
from raynas.strategies.sampling.base import SamplingStrategy, check_positive
from raynas.types import Architecture, EvalResult, best_at_equal_budget


@dataclass(frozen=True)
class EnasConfig:
    """The controller and its REINFORCE training (defaults: the paper and the authors' code).

    Attributes:
        lstm_size: Hidden size of the one-layer LSTM (64 in the authors' code).
        tanh_constant: ``c`` in ``c * tanh(logits / temperature)`` (2.5; 0 turns the squashing off).
        temperature: Divides the logits before the tanh (5; 0 or 1 leaves them as they are).
        learning_rate: Adam's learning rate for the controller (3.5e-4).
        entropy_weight: ``w``, weight of the policy entropy bonus (1e-4).
        baseline_decay: Decay of the reward's moving-average baseline (0.99).
        controller_batch: Candidates per controller step (their losses are averaged).
        controller_steps: Controller steps after each child (supernet) epoch.
        controller_epochs: Child epochs followed by controller training; set it to ``train.epochs``.
        derive_samples: Architectures sampled from the final policy and evaluated; the best wins.
    """

    lstm_size: int = 64
    tanh_constant: float = 2.5
    temperature: float = 5.0
    learning_rate: float = 3.5e-4
    entropy_weight: float = 1e-4
    baseline_decay: float = 0.99
    controller_batch: int = 10
    controller_steps: int = 30
    controller_epochs: int = 10
    derive_samples: int = 100

    def __post_init__(self) -> None:
        check_positive(self.lstm_size, "strategy.lstm_size")
        check_positive(self.controller_batch, "strategy.controller_batch")
        check_positive(self.controller_steps, "strategy.controller_steps")
        check_positive(self.derive_samples, "strategy.derive_samples")
        if self.controller_epochs < 0:
            raise ConfigError(f"strategy.controller_epochs must be >= 0, got {self.controller_epochs}")
        if self.tanh_constant < 0 or self.temperature < 0:
            raise ConfigError("strategy.tanh_constant and strategy.temperature must be >= 0 (0: off)")
        if self.learning_rate <= 0:
            raise ConfigError(f"strategy.learning_rate must be positive, got {self.learning_rate}")
        if self.entropy_weight < 0:
            raise ConfigError(f"strategy.entropy_weight must be >= 0, got {self.entropy_weight}")
        if not 0 <= self.baseline_decay < 1:
            raise ConfigError(f"strategy.baseline_decay must be in [0, 1), got {self.baseline_decay}")


class Controller(nn.Module):
    """The ENAS policy over a sequence of categorical decisions.

    Args:
        sizes: The number of options of every decision, in order.
        hidden: LSTM size.
        tanh_constant: ``c`` in ``c * tanh(logits / temperature)`` (0: no squashing).
        temperature: Divides the logits (0 or 1: none).
    """

    def __init__(
        self, sizes: tuple[int, ...], *, hidden: int, tanh_constant: float, temperature: float
    ) -> None:
        super().__init__()
        self.sizes = sizes
        self.tanh_constant = tanh_constant
        self.temperature = temperature
        self.start = nn.Parameter(torch.zeros(1, hidden))  # the first step's input (g_emb)
        self.lstm = nn.LSTMCell(hidden, hidden)
        self.embeddings = nn.ModuleList(nn.Embedding(n, hidden) for n in sizes)
        self.heads = nn.ModuleList(nn.Linear(hidden, n) for n in sizes)
        for p in self.parameters():  # the paper initialises uniformly in [-0.1, 0.1]
            nn.init.uniform_(p, -0.1, 0.1)

    def logits(self, step: int, h: torch.Tensor) -> torch.Tensor:
        """Decision ``step``'s logits from the LSTM output ``h`` (B, hidden) -> (B, options)."""
        u = self.heads[step](h)
        if self.temperature and self.temperature != 1:
            u = u / self.temperature
        if self.tanh_constant:
            u = self.tanh_constant * torch.tanh(u)
        return u

    def forward(
        self, actions: torch.Tensor | None = None, *, batch: int = 1,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample ``batch`` sequences, or score the given ones (teacher forcing).

        Args:
            actions: (B, D) option indices to score, or None to sample.
            batch: How many sequences to sample when ``actions`` is None.
            generator: The random stream samples are drawn from.

        Returns:
            The actions (B, D), their log-probabilities (B,) and the summed entropy of the
            distributions along each sequence (B,).
        """
        n = actions.shape[0] if actions is not None else batch
        x = self.start.expand(n, -1)  # (B, hidden)
        state = None
        chosen, log_prob, entropy = [], x.new_zeros(n), x.new_zeros(n)
        for step in range(len(self.sizes)):
            h, c = self.lstm(x, state)  # (B, hidden) each
            state = (h, c)
            log_p = torch.log_softmax(self.logits(step, h), dim=-1)  # (B, options)
            if actions is None:
                a = torch.multinomial(log_p.exp(), 1, generator=generator).squeeze(1)  # (B,)
            else:
                a = actions[:, step]
            chosen.append(a)
            log_prob = log_prob + log_p.gather(1, a[:, None]).squeeze(1)
            entropy = entropy - (log_p.exp() * log_p).sum(-1)
            if step + 1 < len(self.sizes):
                x = self.embeddings[step](a)  # (B, hidden): the chosen option feeds the next step
        return torch.stack(chosen, 1), log_prob, entropy

    def policy_loss(
        self, actions: torch.Tensor, advantages: torch.Tensor, entropy_weight: float
    ) -> torch.Tensor:
        """REINFORCE's loss, mean over the batch: ``-(R - b) * log p(a) - w * H``.

        Args:
            actions: (B, D) the sampled option indices.
            advantages: (B,) reward minus baseline of each sample.
            entropy_weight: ``w``.
        """
        _, log_prob, entropy = self(actions)
        return (-advantages * log_prob - entropy_weight * entropy).mean()


@STRATEGIES.register("enas", config=EnasConfig)
class Enas(SamplingStrategy):
    """ENAS's controller: sample from the policy, learn from the candidates' scores, then derive.

    Args:
        config: Controller, REINFORCE and schedule settings.
        space: The space to search.
        seed: Seeds the controller's initial weights and its samples.
    """

    name = "enas"
    needs_supernet = True

    def __init__(self, config: EnasConfig, *, space: Any, seed: int = 0) -> None:
        super().__init__(space=space, seed=seed)
        self.config = config
        sizes = tuple(len(d.options) for d in self.decisions)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.controller = Controller(
                sizes, hidden=config.lstm_size, tanh_constant=config.tanh_constant,
                temperature=config.temperature,
            )
        self.optimizer = torch.optim.Adam(self.controller.parameters(), lr=config.learning_rate)
        self.generator = torch.Generator().manual_seed(seed)
        self.baseline: float | None = None  # set to the first reward, then a moving average
        self.consumed = 0  # results of the history already used for controller steps

    @property
    def evaluations_per_epoch(self) -> int:  # type: ignore[override]
        """Candidates evaluated after each child epoch: ``controller_steps * controller_batch``."""
        return self.config.controller_steps * self.config.controller_batch

    @property
    def search_evaluations(self) -> int:
        """Candidates of the controller-training phase, before the final derivation."""
        return self.config.controller_epochs * self.evaluations_per_epoch

    def check_search(self, *, supernet_epochs: int) -> None:
        if self.config.controller_epochs != supernet_epochs:
            raise ConfigError(
                f"strategy.controller_epochs ({self.config.controller_epochs}) must equal train.epochs "
                f"({supernet_epochs}): ENAS trains its controller after every epoch of the shared child"
            )

    def _sample(self) -> tuple[int, ...]:
        with torch.no_grad():
            actions, _, _ = self.controller(batch=1, generator=self.generator)
        return tuple(int(v) for v in actions[0])

    def sample_path(self) -> Architecture:
        """A path drawn from the policy: the shared child trains on the controller's samples."""
        return self.space.decode(self._sample())

    def propose(self) -> Architecture | None:
        total = self.search_evaluations + self.config.derive_samples
        if self.asked >= total:
            return None
        if self.asked >= self.search_evaluations and len(self.history) < self.search_evaluations:
            return None  # derive from the final policy: wait for the last controller step
        return self.space.decode(self._sample())

    def tell(self, result: EvalResult) -> None:
        super().tell(result)
        batch = self.config.controller_batch
        while (
            len(self.history) - self.consumed >= batch
            and self.consumed + batch <= self.search_evaluations
        ):
            self._step(self.history[self.consumed : self.consumed + batch])
            self.consumed += batch

    def advantages(self, rewards: list[float]) -> torch.Tensor:
        """``R - b`` for each reward in turn, updating the moving-average baseline ``b`` first, as
        the authors' code does (which starts ``b`` at 0; here it starts at the first reward, so the
        first steps are not all pushed towards whatever was sampled)."""
        out = []
        decay = self.config.baseline_decay
        for r in rewards:
            self.baseline = r if self.baseline is None else decay * self.baseline + (1 - decay) * r
            out.append(r - self.baseline)
        return torch.tensor(out)

    def _step(self, results: list[EvalResult]) -> None:
        # A failed evaluation (no score) is the worst outcome: reward 0.
        rewards = [r.score if math.isfinite(r.score) else 0.0 for r in results]
        actions = torch.tensor([self.space.encode(r.architecture) for r in results])  # (B, D)
        loss = self.controller.policy_loss(actions, self.advantages(rewards), self.config.entropy_weight)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()

    @property
    def done(self) -> bool:
        return len(self.history) >= self.search_evaluations + self.config.derive_samples

    def best(self) -> EvalResult | None:
        """The best derived architecture once the final phase has results (else the best so far)."""
        derived = self.history[self.search_evaluations :]
        return best_at_equal_budget(derived or self.history)

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "controller": self.controller.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "baseline": self.baseline,
            "consumed": self.consumed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the policy, its optimiser and random stream; the candidates in flight at the
        save are asked again first, in the same order (see :meth:`SamplingStrategy.load_state_dict`)."""
        super().load_state_dict(state)
        self.controller.load_state_dict(state["controller"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.baseline = None if state["baseline"] is None else float(state["baseline"])
        self.consumed = int(state["consumed"])
