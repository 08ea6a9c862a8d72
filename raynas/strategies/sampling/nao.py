"""Neural Architecture Optimization (Luo, Tian, Qin, Chen and Liu, "Neural Architecture
Optimization", NeurIPS 2018): search in a learned continuous space of architectures.

NAO maps an architecture's token sequence to continuous vectors with an encoder, predicts its
accuracy from them, and maps them back to tokens with a decoder. New candidates are the decoded
results of moving good architectures' encodings uphill on the predictor. The authors' PyTorch code
(``renqianluo/NAO_pytorch``, ``NAO_V1/controller.py``, the ``Encoder``/``Decoder`` modules it
imports, and ``NAO_V1/train_search.py``) does this, and so does this strategy:

- **Tokens.** One token per decision of the space's flat categorical view, taken from one
  vocabulary shared by every position: positions whose options have the same name share the token
  (NAO's one vocabulary of node indices and operations serves every node of both cells). Token 0
  is the decoder's start symbol and never an option.
- **Encoder.** Token embedding -> one-layer LSTM; each time step's output is L2-normalised (these
  are the "encoder outputs"); the architecture embedding is the L2-normalised mean over time of
  the encoder outputs.
- **Predictor.** ``mlp_layers`` x (Linear, ReLU, Dropout) on the embedding (none by default), a
  Linear to one unit and a sigmoid: a predicted performance in [0, 1].
- **Decoder.** A one-layer LSTM whose initial hidden and cell states are both the architecture
  embedding, with dot-product attention over the encoder outputs (softmax of the scores, the
  attended mix concatenated with the LSTM output, a Linear back to the hidden size and a tanh),
  then a Linear to the vocabulary. It is fed the start symbol and then the previous token: the
  true one in training (teacher forcing), its own most likely one at inference (greedy). Its
  logits are masked to the tokens of the position's options, so every decoded sequence is an
  architecture of the space.
- **Training** (each round, on every architecture evaluated so far): loss =
  ``trade_off`` * MSE(predicted, target) + (1 - ``trade_off``) * reconstruction NLL (the mean over
  tokens), Adam (a fresh optimizer each round, as the code builds one each time; the network's
  weights carry over), ``l2_reg`` as Adam's weight decay, the gradient norm clipped to
  ``grad_bound``, ``epochs`` passes over the data shuffled in batches of ``batch_size``. The
  targets are the scores min-max normalised over the architectures trained on.
- **New candidates.** The ``top_k`` best architectures so far are encoded; the encoder outputs
  ``h`` move along the gradient of the predicted performance with respect to them,
  ``h' = h + s * dP/dh``; ``h'`` is re-normalised per time step, its normalised mean is the new
  embedding, and the decoder decodes from both greedily. The step size ``s`` starts at
  ``step_size`` and grows by ``step_size`` until ``new_architectures`` architectures never asked
  before are found (the best-ranked starting point first at each step size) or ``s`` would pass
  ``max_step_size``; a round may so find fewer.
- **Loop.** ``seed_architectures`` uniformly random (distinct) candidates are asked; once all are
  told, each of ``iterations`` rounds trains the network on every result so far, generates the new
  candidates, asks them and waits for their results. A round starts when the last result of the
  one before is told (inside that :meth:`~Nao.tell`), so :attr:`~Nao.done` is exact between calls.

Defaults and where they come from (``NAO_V1/train_search.py`` argparse unless said otherwise):
``seed_architectures`` 600 (``--controller_seed_arch``), ``new_architectures`` 300
(``--controller_new_arch``; also step 7 of the TensorFlow repository's ``NAO/README.md``: "300 new
architectures"), ``top_k`` 100 (the code's ``old_archs[:100]``; the README's "top 100"),
``iterations`` 3 (the code trains the network and generates at the evaluation points 50, 100 and
150 of its ``--child_epochs 200`` with ``--child_eval_epochs 50``, and stops at 200; the README:
"2 or 3 iterations is enough"), ``epochs`` 1000 (``--controller_epochs``), ``batch_size`` 100
(``--controller_batch_size``), ``learning_rate`` 0.001 (``--controller_lr``), ``l2_reg`` 0
(``--controller_l2_reg``), ``grad_bound`` 5 (``--controller_grad_bound``), ``trade_off`` 0.8
(``--controller_trade_off``), ``emb_size`` 32 (``--controller_encoder_emb_size``),
``hidden_size`` 64 (``--controller_encoder_hidden_size`` and ``--controller_decoder_hidden_size``),
``mlp_layers`` 0, ``mlp_hidden_size`` 200, ``mlp_dropout`` 0.1 (``--controller_mlp_*``),
``step_size`` 1 and ``max_step_size`` 50 (the search loop's ``predict_step_size += 1`` and
``max_step_size = 50``). The attention's output weights start uniform in [-0.04, 0.04] (the
decoder's ``INITRANGE``); the other weights start at torch's defaults, as there.

Where this differs from the code:

- The code's CNN encoder reads its 40 tokens as 20 steps of two concatenated embeddings (an
  input index and its operation); here each decision is one step, since the flat view's decisions
  are not such pairs (a DARTS node is an inputs pair and two operations): the LSTM reads
  ``emb_size`` inputs.
- The code masks the decoder only when it decodes (its training NLL is over the whole
  vocabulary); here the masked distribution is also the one trained, so the NLL is that of the
  position's options.
- No data augmentation. An earlier version of ``NAO_V1/train_search.py`` held 10% of the data out
  (to report pairwise accuracy) and added ``--controller_expand`` - 1 = 9 copies of the rest, each
  with one node per cell whose two (input, op) pairs are swapped; the latest version's ``if not
  args.controller_expand`` skips both at the default of 10 and trains on all of it, as here. The
  swap would change nothing here anyway: in the flat view a node's two inputs are already in
  canonical order (the darts space's pairs ``a+b`` with ``a < b``, each op tied to its input), so
  a swapped copy is the same token sequence.
- The code tries one step size past its maximum (it stops once ``s > 50``, after trying 51); here
  the last step size tried is the largest multiple of ``step_size`` not above ``max_step_size``.
  (The TensorFlow repository's pipeline instead decodes at the three step sizes 10, 20 and 30,
  its ``--predict_lambda``, per its README.)
- Failed evaluations (score ``-inf``) train nothing: they are left out of the network's data, and
  so of the min-max normalisation, but are never asked again. If all targets are equal they are all
  0.5 (min-max is undefined). A round with no finite result at all asks ``new_architectures``
  random unseen architectures instead (logged). Results of one architecture told twice count once,
  with the best score. Candidates a scheduler stopped early are compared at the budget every
  result reached (:func:`raynas.types.scores_at_common_budget`).

Resume is exact: the state holds the network's weights, the round, the candidates generated and not
asked yet, and the torch generator that draws the batches and the dropout masks (the optimizer is
created afresh each round, as in the code, so there is no optimizer state between rounds to keep).
``strategy.cell_shape`` is not supported.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from raynas.config import Check, Rule, check_rules
from raynas.strategies.registry import STRATEGIES
from raynas.strategies.sampling.base import SHAPE_TRIES, SamplingStrategy
from raynas.types import Architecture, EvalResult, scores_at_common_budget

log = logging.getLogger(__name__)

Values = tuple[int, ...]

START = 0  # the decoder's start symbol (the code's SOS_ID); never an option
INIT_RANGE = 0.04  # the attention's output weights start uniform in [-INIT_RANGE, INIT_RANGE]


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread inside, restoring the thread count after. The network is small
    (hidden size 64): on 2 CPU cores that candidates' training also uses, a training step took 10 ms
    on one thread and up to 1.5 s on two (the threads wait for each other on every small op)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class NaoConfig:
    """NAO's search loop and its encoder-predictor-decoder (defaults: ``NAO_V1/train_search.py``;
    see the module docstring for each one's source).

    Attributes:
        seed_architectures: Random candidates evaluated before the first round.
        iterations: Rounds of (train the network on every result; generate; evaluate).
        new_architectures: New candidates generated per round (a round may find fewer).
        top_k: The best architectures so far whose encodings are moved to generate.
        epochs: Passes over the data per round.
        batch_size: Architectures per training step.
        learning_rate: Adam's learning rate.
        l2_reg: Adam's weight decay.
        grad_bound: Largest gradient norm of a training step (clipped above it).
        trade_off: Weight of the predictor's MSE; the reconstruction NLL gets 1 - trade_off.
        emb_size: Token embedding size of the encoder.
        hidden_size: Hidden size of the encoder's and the decoder's LSTMs.
        mlp_layers: Hidden layers of the predictor's MLP (0: a Linear on the embedding).
        mlp_hidden_size: Their width.
        mlp_dropout: Dropout after each of them.
        step_size: The first step size along the predictor's gradient, and its increment.
        max_step_size: The largest step size tried.
    """

    seed_architectures: Annotated[int, Rule(ge=1)] = 600
    iterations: Annotated[int, Rule(ge=1)] = 3
    new_architectures: Annotated[int, Rule(ge=1)] = 300
    top_k: Annotated[int, Rule(ge=1)] = 100
    epochs: Annotated[int, Rule(ge=1)] = 1000
    batch_size: Annotated[int, Rule(ge=1)] = 100
    learning_rate: Annotated[float, Rule(gt=0)] = 1e-3
    l2_reg: Annotated[float, Rule(ge=0)] = 0.0
    grad_bound: Annotated[float, Rule(gt=0)] = 5.0
    trade_off: Annotated[float, Rule(ge=0, le=1)] = 0.8
    emb_size: Annotated[int, Rule(ge=1)] = 32
    hidden_size: Annotated[int, Rule(ge=1)] = 64
    mlp_layers: Annotated[int, Rule(ge=0)] = 0
    mlp_hidden_size: Annotated[int, Rule(ge=1)] = 200
    mlp_dropout: Annotated[float, Rule(ge=0, lt=1)] = 0.1
    step_size: Annotated[float, Rule(gt=0)] = 1.0
    max_step_size: Annotated[float, Rule(gt=0)] = 50.0

    checks: ClassVar[tuple[Check, ...]] = (
        Check(
            "step_size <= max_step_size",
            "strategy.step_size ({step_size}) must be at most strategy.max_step_size ({max_step_size})",
        ),
    )

    def __post_init__(self) -> None:
        check_rules(self, "strategy")


class EncoderPredictorDecoder(nn.Module):
    """NAO's network over a fixed-length token sequence (one token per decision).

    Args:
        option_tokens: Per position, the token of each of its options (tokens 1..vocab_size-1;
            0 is the start symbol).
        vocab_size: Tokens in all, the start symbol included.
        emb_size: The encoder's token embedding size.
        hidden_size: Both LSTMs' hidden size.
        mlp_layers: Hidden layers of the predictor's MLP.
        mlp_hidden_size: Their width.
        mlp_dropout: Dropout after each (in training).
    """

    def __init__(
        self,
        option_tokens: Sequence[Sequence[int]],
        vocab_size: int,
        *,
        emb_size: int,
        hidden_size: int,
        mlp_layers: int,
        mlp_hidden_size: int,
        mlp_dropout: float,
    ) -> None:
        super().__init__()
        self.length = len(option_tokens)
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, emb_size)
        self.encoder = nn.LSTM(emb_size, hidden_size, batch_first=True)
        self.mlp = nn.ModuleList(
            nn.Linear(hidden_size if i == 0 else mlp_hidden_size, mlp_hidden_size) for i in range(mlp_layers)
        )
        self.mlp_dropout = mlp_dropout
        self.regressor = nn.Linear(mlp_hidden_size if mlp_layers else hidden_size, 1)
        self.decoder_embedding = nn.Embedding(vocab_size, hidden_size)
        self.decoder = nn.LSTM(hidden_size, hidden_size, batch_first=True)
        self.attention_out = nn.Linear(2 * hidden_size, hidden_size)
        nn.init.uniform_(self.attention_out.weight, -INIT_RANGE, INIT_RANGE)
        self.out = nn.Linear(hidden_size, vocab_size)
        # Lookup tables, fixed by the space (not weights: left out of the state).
        widest = max(len(t) for t in option_tokens)
        tokens = torch.zeros(self.length, widest, dtype=torch.long)  # (T, widest option count)
        valid = torch.zeros(self.length, vocab_size, dtype=torch.bool)  # (T, V)
        option_of = torch.full((self.length, vocab_size), -1, dtype=torch.long)  # (T, V)
        for t, row in enumerate(option_tokens):
            for j, token in enumerate(row):
                tokens[t, j] = token
                valid[t, token] = True
                option_of[t, token] = j
        self.register_buffer("option_tokens", tokens, persistent=False)
        self.register_buffer("valid", valid, persistent=False)
        self.register_buffer("option_of", option_of, persistent=False)

    def tokens(self, values: torch.Tensor) -> torch.Tensor:
        """Option indices (B, T) as tokens (B, T)."""
        return self.option_tokens[torch.arange(self.length), values]

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """The encoder outputs (B, T, H) of tokens (B, T), each time step L2-normalised."""
        out, _ = self.encoder(self.embedding(tokens))  # (B, T, H)
        return F.normalize(out, p=2, dim=-1)

    @staticmethod
    def embed(outputs: torch.Tensor) -> torch.Tensor:
        """The architecture embedding (B, H): the L2-normalised mean over time of ``outputs``."""
        return F.normalize(outputs.mean(dim=1), p=2, dim=-1)

    def predict(self, outputs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Predicted performance (B,) in [0, 1] from encoder outputs (B, T, H); in training mode
        the MLP's dropout masks are drawn from ``generator``."""
        x = self.embed(outputs)  # (B, H)
        for layer in self.mlp:
            x = torch.relu(layer(x))
            if self.training and self.mlp_dropout > 0:
                keep = torch.rand(x.shape, generator=generator) >= self.mlp_dropout
                x = x * keep / (1 - self.mlp_dropout)
        return torch.sigmoid(self.regressor(x)).squeeze(-1)

    def _attend(self, out: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
        """Attention of decoder outputs (B, T', H) over encoder outputs (B, T, H) -> (B, T', H)."""
        weights = torch.bmm(out, outputs.transpose(1, 2)).softmax(dim=-1)  # (B, T', T)
        mix = torch.bmm(weights, outputs)  # (B, T', H)
        return torch.tanh(self.attention_out(torch.cat([mix, out], dim=-1)))

    def _log_probs(self, attended: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (B, T', V) over the tokens ``valid`` (T', V) allows."""
        logits = self.out(attended).masked_fill(~valid, -math.inf)  # (B, T', V)
        return logits.log_softmax(dim=-1)

    def _initial_state(self, outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.embed(outputs).unsqueeze(0).contiguous()  # (1, B, H)
        return embedding, embedding

    def reconstruct(self, outputs: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced log-probabilities (B, T, V) of decoding ``tokens`` (B, T) from
        ``outputs`` (B, T, H): the decoder reads the start symbol, then the true previous token."""
        start = torch.full_like(tokens[:, :1], START)
        inputs = torch.cat([start, tokens[:, :-1]], dim=1)  # (B, T)
        out, _ = self.decoder(self.decoder_embedding(inputs), self._initial_state(outputs))  # (B, T, H)
        return self._log_probs(self._attend(out, outputs), self.valid)

    def greedy(self, outputs: torch.Tensor) -> torch.Tensor:
        """Option indices (B, T) decoded greedily from encoder outputs (B, T, H), each step fed the
        previous step's most likely token."""
        state = self._initial_state(outputs)
        token = torch.full((outputs.shape[0], 1), START, dtype=torch.long)  # (B, 1)
        chosen = []
        for t in range(self.length):
            out, state = self.decoder(self.decoder_embedding(token), state)  # (B, 1, H)
            log_probs = self._log_probs(self._attend(out, outputs), self.valid[t : t + 1])  # (B, 1, V)
            token = log_probs.argmax(dim=-1)  # (B, 1)
            chosen.append(self.option_of[t, token.squeeze(1)])
        return torch.stack(chosen, dim=1)

    def predictor_gradient(self, outputs: torch.Tensor) -> torch.Tensor:
        """dP/dh (B, T, H): each architecture's predicted performance differentiated with
        respect to its encoder outputs ``h`` (B, T, H)."""
        with torch.enable_grad():
            h = outputs.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.predict(h).sum(), h)  # rows are independent
        return grad

    def move(self, outputs: torch.Tensor, step: float) -> torch.Tensor:
        """Encoder outputs moved uphill on the predictor, ``h + step * dP/dh``, re-normalised per
        time step (B, T, H)."""
        return F.normalize(outputs + step * self.predictor_gradient(outputs), p=2, dim=-1)


@STRATEGIES.register("nao", config=NaoConfig)
class Nao(SamplingStrategy):
    """NAO: random seeds, then rounds of training the encoder-predictor-decoder on every result
    and decoding the top architectures' encodings moved along the predictor's gradient.

    Args:
        config: The loop's sizes and the network's settings.
        space: The space to search.
        seed: Seeds the random candidates, the network's initial weights, its batches and dropout.
    """

    name = "nao"

    def __init__(self, config: NaoConfig, *, space: Any, seed: int = 0) -> None:
        super().__init__(space=space, seed=seed)
        self.config = config
        vocabulary: dict[str, int] = {}
        for decision in self.decisions:
            for option in decision.options:
                vocabulary.setdefault(option, len(vocabulary) + 1)  # 0 is the start symbol
        self.vocabulary = vocabulary
        option_tokens = [[vocabulary[o] for o in d.options] for d in self.decisions]
        with torch.random.fork_rng(devices=[]):  # the caller's random stream is left as it is
            torch.manual_seed(seed)
            self.model = EncoderPredictorDecoder(
                option_tokens, len(vocabulary) + 1, emb_size=config.emb_size, hidden_size=config.hidden_size,
                mlp_layers=config.mlp_layers, mlp_hidden_size=config.mlp_hidden_size,
                mlp_dropout=config.mlp_dropout,
            ).eval()
        self.generator = torch.Generator().manual_seed(seed)
        self.round = 0  # rounds whose candidates were generated
        self.queue: list[Architecture] = []  # this round's candidates not asked yet
        self.seen: set[str] = set()  # keys of every candidate asked, queued or told

    # -- the loop ----------------------------------------------------------------------------------

    def propose(self) -> Architecture | None:
        if self.asked < self.config.seed_architectures:
            arch = self._unseen_random()
            self.seen.add(arch.key())
            return arch
        self._advance()
        return self.queue.pop(0) if self.queue else None  # None: waiting for results, or done

    def tell(self, result: EvalResult) -> None:
        """Learn from one result; the last one of the seeds or of a round starts the next round."""
        super().tell(result)
        self.seen.add(result.architecture.key())  # one it did not ask for is not generated either
        self._advance()

    def _advance(self) -> None:
        """Once every candidate asked is told, train and generate the next round at once (and the
        one after it, if a round finds no new architecture), so that :attr:`done` is known
        between any two calls, as a driver reads it."""
        while (
            self.asked >= self.config.seed_architectures and not self.queue and not self.in_flight
            and self.round < self.config.iterations
        ):
            self.round += 1
            self.queue = self._new_round()

    @property
    def done(self) -> bool:
        return (
            self.asked >= self.config.seed_architectures and self.round >= self.config.iterations
            and not self.queue and not self.in_flight
        )

    def _unseen_random(self) -> Architecture:
        """A uniformly random architecture not seen yet (up to :data:`SHAPE_TRIES` draws)."""
        for _ in range(SHAPE_TRIES):
            arch = self.random_architecture()
            if arch.key() not in self.seen:
                break
        return arch

    def _new_round(self) -> list[Architecture]:
        """Train on every result so far and generate this round's new candidates."""
        data = self.training_data()
        if not data:
            log.warning("nao: round %d has no finite score to learn from; asking %d random architectures",
                        self.round, self.config.new_architectures)
            out = []
            for _ in range(self.config.new_architectures):
                arch = self._unseen_random()
                if arch.key() not in self.seen:
                    self.seen.add(arch.key())
                    out.append(arch)
            return out
        with one_thread():
            ranked = self.fit(data)
            new = self.generate(ranked[: self.config.top_k])
        log.info("nao: round %d generated %d new architectures from the top %d of %d",
                 self.round, len(new), min(self.config.top_k, len(ranked)), len(ranked))
        return new

    # -- the network -------------------------------------------------------------------------------

    def training_data(self) -> list[tuple[Values, float]]:
        """Every architecture told with a finite score, once (its best), in the order first told,
        with its score at the budget all results reached."""
        best: dict[str, tuple[Values, float]] = {}
        for result, score in zip(self.history, scores_at_common_budget(self.history), strict=True):
            if not math.isfinite(score):
                continue
            key = result.architecture.key()
            if key not in best or score > best[key][1]:
                best[key] = (tuple(self.space.encode(result.architecture)), score)
        return list(best.values())

    def tokens(self, values: Sequence[Sequence[int]]) -> torch.Tensor:
        """The token sequences (N, T) of architectures given by their option indices."""
        values = torch.tensor([list(v) for v in values], dtype=torch.long).reshape(-1, self.model.length)
        return self.model.tokens(values)

    def fit(self, data: Sequence[tuple[Values, float]]) -> list[Values]:
        """Train the network on ``data`` (option indices, score), the scores min-max normalised;
        the architectures, best score first.

        Returns:
            The option indices of ``data``, sorted by score, best first (ties in data order).
        """
        values = [v for v, _ in data]
        scores = [s for _, s in data]
        low, high = min(scores), max(scores)
        targets = [(s - low) / (high - low) if high > low else 0.5 for s in scores]
        self.train_network(self.tokens(values), torch.tensor(targets, dtype=torch.float32))
        order = sorted(range(len(values)), key=lambda i: -scores[i])
        return [values[i] for i in order]

    def train_network(self, tokens: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
        """``epochs`` passes of NAO's joint loss over ``tokens`` (N, T) and ``targets`` (N,) in
        shuffled batches, with a fresh Adam optimizer.

        Returns:
            The last batch's MSE and NLL.
        """
        config, model = self.config, self.model
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.l2_reg)
        mse = nll = torch.tensor(0.0)
        for _ in range(config.epochs):
            order = torch.randperm(len(tokens), generator=self.generator)
            for start in range(0, len(tokens), config.batch_size):
                batch = order[start : start + config.batch_size]
                x, y = tokens[batch], targets[batch]  # (B, T), (B,)
                outputs = model.encode(x)  # (B, T, H)
                mse = F.mse_loss(model.predict(outputs, self.generator), y)
                log_probs = model.reconstruct(outputs, x)  # (B, T, V)
                nll = F.nll_loss(log_probs.reshape(-1, model.vocab_size), x.reshape(-1))
                loss = config.trade_off * mse + (1 - config.trade_off) * nll
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_bound)
                optimizer.step()
        model.eval()
        log.debug("nao: trained on %d architectures, mse %.4f nll %.4f", len(tokens), mse.item(), nll.item())
        return float(mse.detach()), float(nll.detach())

    def generate(self, starts: Sequence[Values]) -> list[Architecture]:
        """Up to ``new_architectures`` architectures not seen yet, decoded from the encodings of
        ``starts`` (best first) moved along the predictor's gradient with growing step sizes."""
        config, model = self.config, self.model
        found: list[Architecture] = []
        with torch.no_grad():
            outputs = model.encode(self.tokens(starts))  # (K, T, H)
        k = 1
        while len(found) < config.new_architectures and k * config.step_size <= config.max_step_size:
            with torch.no_grad():
                decoded = model.greedy(model.move(outputs, k * config.step_size)).tolist()  # (K, T)
            for values in decoded:
                arch = self.space.decode(values)
                if arch.key() in self.seen:
                    continue
                self.seen.add(arch.key())
                found.append(arch)
                if len(found) == config.new_architectures:
                    break
            k += 1
        log.debug("nao: %d new architectures at step sizes up to %g", len(found), (k - 1) * config.step_size)
        return found

    # -- state -------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "round": self.round,
            "queue": [a.to_json() for a in self.queue],
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where the state was saved: the candidates in flight are asked again first (see
        :meth:`SamplingStrategy.load_state_dict`), then the round's queued ones."""
        super().load_state_dict(state)
        self.round = int(state["round"])
        self.queue = [Architecture.from_json(a) for a in state["queue"]]
        self.model.load_state_dict(state["model"])
        self.model.eval()
        self.generator.set_state(state["generator"])
        self.seen = {a.key() for a in (*self.in_flight, *self.queue)} | {
            r.architecture.key() for r in self.history
        }
