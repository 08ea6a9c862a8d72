"""A candidate recurrent cell trained from scratch as DARTS's ``rnn/train.py`` trains one
(:mod:`raynas.train.language_model`), scored by the validation text's log-likelihood per token
(its perplexity) of the network that training keeps: how DARTS picks its recurrent cell among
four searches (Liu et al., ICLR 2019, Sec. 3.3: the best cell "based on its validation
performance obtained by training from scratch for a short period", 300 epochs on PTB).

The defaults are rnn/train.py's: SGD at a constant lr 20 without momentum, weight decay 8e-7,
gradient clip 0.25, TAR beta 1e-3 (AR alpha 0), averaged SGD after ``nonmono`` 5 epochs without
improvement, the training text in 64 streams read window after window with rnn/train.py's
variable windows, the validation text in 10 streams; the dropouts are the space's (``space.dropout``
and the rest: the same in rnn/train_search.py and rnn/train.py). The test text is never read: the
choice is made on the validation text alone.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

import torch

from raynas.config import RetrainConfig, Rule, SearchConfig, check_rules
from raynas.data import DATASETS, search_objective
from raynas.data.ptb import PtbConfig
from raynas.errors import ConfigError
from raynas.evaluators.registry import EVALUATORS
from raynas.evaluators.scratch import candidate_seed, network_size
from raynas.profile import count_params
from raynas.spaces import SPACES
from raynas.train.accel import pick_device, prepare
from raynas.train.language_model import fit_language_model
from raynas.types import Architecture, EvalResult


@dataclass(frozen=True)
class LanguageModelConfig:
    """The training of one candidate's language model (defaults: rnn/train.py's, but the epochs).

    Attributes:
        epochs: Epochs of training (rnn/train.py's upper limit is 8000; DARTS chose among its
            cells after 300).
        channels: Units of the embedding and hidden state (``emsize = nhid = nhidlast``; 0: the
            job's ``space.channels``; rnn/train.py's 850).
        learning_rate: SGD's constant rate, and the averaged SGD's it switches to.
        weight_decay: L2 weight decay.
        grad_clip: Gradient-norm clip.
        ar: Weight of the activation regularisation (``--alpha``).
        tar: Weight of the temporal activation regularisation (``--beta``).
        nonmono: Epochs of the non-monotonic trigger of averaged SGD (0: SGD throughout).
        streams: Parallel streams of the training text (``--batch_size``).
        valid_streams: Parallel streams of the validation text (``eval_batch_size``).
    """

    epochs: Annotated[int, Rule(ge=1)] = 300
    channels: Annotated[int, Rule(ge=0, says="must be >= 0 (0: the space's)")] = 0
    learning_rate: Annotated[float, Rule(gt=0)] = 20.0
    weight_decay: Annotated[float, Rule(ge=0)] = 8e-7
    grad_clip: Annotated[float, Rule(ge=0)] = 0.25
    ar: Annotated[float, Rule(ge=0)] = 0.0
    tar: Annotated[float, Rule(ge=0)] = 1e-3
    nonmono: Annotated[int, Rule(ge=0)] = 5
    streams: Annotated[int, Rule(ge=1)] = 64
    valid_streams: Annotated[int, Rule(ge=1)] = 10

    def __post_init__(self) -> None:
        check_rules(self, "evaluator")


def trains_on_text(job: SearchConfig | RetrainConfig) -> bool:
    """Whether the job's data is a corpus of token streams (PTB, WikiText-2): its networks are
    language models, trained as rnn/train.py trains them."""
    return isinstance(job.data.config, PtbConfig)


@EVALUATORS.register("language_model", config=LanguageModelConfig)
class LanguageModelEvaluator:
    """Trains each candidate's language model from scratch as rnn/train.py does (module docstring).

    Args:
        config: The training.
        search: The search job (space, data, seed); its data must be a text corpus.

    Raises:
        ConfigError: The job's data is not a corpus of token streams.
    """

    def __init__(self, config: LanguageModelConfig, *, search: SearchConfig) -> None:
        if not trains_on_text(search):
            raise ConfigError(
                f"evaluator language_model trains language models on a text corpus (ptb, wikitext2), "
                f"not on {search.data.name}; use evaluator scratch"
            )
        self.config = config
        self.search = search
        self.space = SPACES.create(search.space.name, search.space.config)
        self.data = DATASETS.create(search.data.name, search.data.config)
        self.device = pick_device(search.execution.device)
        self.objective = search_objective(search.data.name)  # valid_loglik
        self.network: torch.nn.Module | None = None  # the last network trained: the one kept

    def initial_network(self, arch: Architecture) -> torch.nn.Module:
        """``arch``'s language model as built, untrained, at the configured size."""
        return self.space.build(  # type: ignore[no-any-return]
            arch, self.data.info, **network_size(self.search, channels=self.config.channels)
        )

    def train(
        self, arch: Architecture, *, state: dict[str, Any] | None = None
    ) -> Iterator[tuple[dict[str, float], dict[str, Any]]]:
        """Train ``arch``'s language model, yielding ``(metrics, state)`` after each epoch
        (:func:`raynas.train.language_model.fit_language_model`'s metrics, with ``params``);
        after the last epoch :attr:`network` holds the network of the lowest validation loss.

        Args:
            arch: The candidate.
            state: A state yielded earlier, to continue from.
        """
        cfg, seed = self.config, candidate_seed(self.search.seed, arch)
        torch.manual_seed(seed)
        model = self.initial_network(arch).to(self.device)
        self.network = model
        data = self.data
        lengths = "train" if data.config.windows == "variable" else "whole"
        train_loader = data.stream_loader("train", cfg.streams, seed=seed, lengths=lengths)
        valid_loader = data.stream_loader("valid", cfg.valid_streams)
        params = float(count_params(model))
        execution = self.search.execution
        network = prepare(
            model, self.device, channels_last=execution.channels_last, compile=execution.compile
        )
        for metrics, new_state in fit_language_model(
            network, train_loader, valid_loader, None, self.device, epochs=cfg.epochs,
            learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip,
            bptt=data.config.bptt, ar=cfg.ar, tar=cfg.tar, nonmono=cfg.nonmono, state=state,
            generator=train_loader.batch_sampler.generator,  # type: ignore[union-attr]
            precision=execution.precision,
        ):
            metrics["params"] = params
            yield metrics, new_state

    def evaluate(self, arch: Architecture, *, trial_id: str = "") -> EvalResult:
        """Train ``arch`` for the whole budget; its scores are those of the network kept (the
        lowest validation loss: rnn/train.py's saved model), the last epoch's as ``last_valid_*``."""
        start = time.perf_counter()
        *_, (metrics, _) = self.train(arch)
        last = {f"last_{key}": value for key, value in metrics.items() if key.startswith("valid_")}
        kept = {key[5:]: value for key, value in metrics.items() if key.startswith("best_valid_")}
        return EvalResult(
            architecture=arch, metrics={**metrics, **last, **kept}, objective=self.objective,
            trial_id=trial_id, budget=metrics["epoch"], seconds=time.perf_counter() - start,
        )


__all__ = ["LanguageModelConfig", "LanguageModelEvaluator", "trains_on_text"]
