"""The DARTS recurrent space: the cell's math against a hand computation, the published genotypes
and the parameter count of the PTB model, genotype derivation from alphas, the PTB loader on files
in the real format, and a tiny search through the real search entry point.

Published facts come from quark0/darts: ``rnn/genotypes.py`` (DARTS_V1, DARTS_V2), ``rnn/model.py``
(the cell and the language model), ``rnn/train.py`` (850 units) and the README (PTB: 23M params).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from mlflow.tracking import MlflowClient

from raynas.data import DATASETS
from raynas.data.ptb import PtbConfig
from raynas.errors import ArchitectureError, ConfigError, DataError
from raynas.profile import count_params
from raynas.spaces import SPACES
from raynas.spaces.darts_rnn import (
    PUBLISHED,
    DartsRnnCell,
    DartsRnnGenotype,
    DartsRnnSpaceConfig,
    RnnLanguageModel,
)
from raynas.supernet import build_supernet
from raynas.supernet.darts_rnn import DartsRnnSupernet, derive_recurrent
from raynas.tracking.results import ResultsStore
from raynas.types import Architecture, DatasetInfo
from tests.conftest import mlflow_store
from tests.fixtures import PTB_TRAIN, write_ptb

PTB = DatasetInfo("ptb", 1, 10_000, 35)


# --- hand computations in plain Python (no torch) ---------------------------------------------


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


FUNCTIONS = {"tanh": math.tanh, "relu": lambda v: max(v, 0.0), "sigmoid": sigmoid, "identity": lambda v: v}


def vec_mat(v: list[float], m: list[list[float]]) -> list[float]:
    """Row vector times matrix."""
    return [sum(v[r] * m[r][c] for r in range(len(v))) for c in range(len(m[0]))]


def highway(s: list[float], ch: list[float], f: str) -> list[float]:
    """s + sigmoid(c) * (f(h) - s), with [c, h] = ch."""
    n = len(s)
    return [s[u] + sigmoid(ch[u]) * (FUNCTIONS[f](ch[n + u]) - s[u]) for u in range(n)]


def hand_cell(x: list[float], h: list[float], w0: list[list[float]], ws: list[list[list[float]]],
              recurrent: list[tuple[str, int]], concat: list[int]) -> list[float]:
    """One step of the DARTS cell, from the paper's equations (Sec. 2.1, 3.1.2)."""
    states = [highway(h, vec_mat(x + h, w0), "tanh")]  # s0 = h + c0 * (tanh(h0) - h)
    for i, (f, j) in enumerate(recurrent):
        states.append(highway(states[j], vec_mat(states[j], ws[i]), f))
    return [sum(states[k][u] for k in concat) / len(concat) for u in range(len(h))]


def rand_matrix(gen: torch.Generator, rows: int, cols: int) -> list[list[float]]:
    return (torch.rand(rows, cols, generator=gen, dtype=torch.float64) - 0.5).mul(2).tolist()


def test_cell_matches_a_hand_computation_over_two_steps() -> None:
    nhid = 3
    genotype = DartsRnnGenotype((("tanh", 0), ("relu", 1), ("sigmoid", 0), ("identity", 2)), (1, 2, 3, 4))
    cell = DartsRnnCell(genotype=genotype, ninp=nhid, nhid=nhid, dropouth=0.5, dropoutx=0.5).double().eval()
    gen = torch.Generator().manual_seed(0)
    w0 = rand_matrix(gen, 2 * nhid, 2 * nhid)
    ws = [rand_matrix(gen, nhid, 2 * nhid) for _ in range(4)]
    with torch.no_grad():
        cell.W0.copy_(torch.tensor(w0, dtype=torch.float64))
        for w, value in zip(cell.Ws, ws, strict=True):
            w.copy_(torch.tensor(value, dtype=torch.float64))
    xs = rand_matrix(gen, 2, nhid)  # two time steps, batch of one
    h0 = [0.3, -0.2, 0.1]
    out = cell(torch.tensor(xs, dtype=torch.float64).unsqueeze(1), torch.tensor([h0], dtype=torch.float64))
    h1 = hand_cell(xs[0], h0, w0, ws, list(genotype.recurrent), list(genotype.concat))
    h2 = hand_cell(xs[1], h1, w0, ws, list(genotype.recurrent), list(genotype.concat))
    assert out.shape == (2, 1, nhid)  # (T, B, nhid)
    assert out[0, 0].tolist() == pytest.approx(h1, abs=1e-12)
    assert out[1, 0].tolist() == pytest.approx(h2, abs=1e-12)


def test_search_cell_matches_a_hand_computation_of_the_mixture() -> None:
    """Every edge mixes every activation (``none`` adds nothing), then BatchNorm without affine
    parameters; in eval mode with fresh statistics it divides by sqrt(1 + 1e-5)."""
    nhid, acts = 3, ("none", "tanh", "relu", "sigmoid", "identity")
    net = DartsRnnSupernet(ntoken=5, nhid=nhid, nodes=2, activations=acts, dropout=0, dropouth=0,
                           dropoutx=0, dropouti=0, dropoute=0).double().eval()
    cell = net.cell
    gen = torch.Generator().manual_seed(1)
    w0, ws = rand_matrix(gen, 2 * nhid, 2 * nhid), [rand_matrix(gen, nhid, 2 * nhid) for _ in range(2)]
    alpha = rand_matrix(gen, 3, 5)
    with torch.no_grad():
        cell.W0.copy_(torch.tensor(w0, dtype=torch.float64))
        for w, value in zip(cell.Ws, ws, strict=True):
            w.copy_(torch.tensor(value, dtype=torch.float64))
        net.alpha.copy_(torch.tensor(alpha, dtype=torch.float64))
    probs = [[math.exp(a) / sum(math.exp(b) for b in row) for a in row] for row in alpha]
    bn = 1 / math.sqrt(1 + 1e-5)
    x, h = [0.5, -1.0, 0.25], [0.1, 0.2, -0.3]
    states = [[bn * v for v in highway(h, vec_mat(x + h, w0), "tanh")]]
    offset = 0
    for i in range(2):
        node = [0.0] * nhid
        for j in range(i + 1):
            ch = vec_mat(states[j], ws[i])
            for k, name in enumerate(acts):
                if name != "none":
                    node = [a + probs[offset + j][k] * b for a, b in zip(node, highway(states[j], ch, name),
                                                                          strict=True)]
        states.append([bn * v for v in node])
        offset += i + 1
    expected = [(states[1][u] + states[2][u]) / 2 for u in range(nhid)]
    cell.weights = net.edge_weights()
    out = cell(torch.tensor([[x]], dtype=torch.float64), torch.tensor([h], dtype=torch.float64))
    assert out[0, 0].tolist() == pytest.approx(expected, abs=1e-12)


def test_language_model_shapes_dropout_and_tied_decoder() -> None:
    genotype = PUBLISHED["DARTS_V2"]
    cell = DartsRnnCell(genotype=genotype, ninp=6, nhid=6, dropouth=0.25, dropoutx=0.75)
    model = RnnLanguageModel(cell=cell, ntoken=11, dropout=0.75, dropouti=0.2, dropoute=0.1)
    assert model.decoder.weight is model.encoder.weight
    tokens = torch.randint(11, (4, 7))  # (B, T)
    model.eval()
    logits, hidden = model.run(tokens)
    assert logits.shape == (4, 11, 7) and hidden.shape == (4, 6)
    assert torch.equal(model(tokens), logits)  # no dropout in eval mode
    # Carrying the hidden state: two halves give the whole sequence's logits.
    first, h = model.run(tokens[:, :3])
    second, _ = model.run(tokens[:, 3:], h)
    assert torch.allclose(torch.cat([first, second], 2), logits, atol=1e-6)
    model.train()
    assert not torch.equal(model(tokens), logits)  # dropout in training
    loss = torch.nn.functional.cross_entropy(model(tokens), tokens)  # targets (B, T)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_dropouts_are_variational_one_mask_per_sequence() -> None:
    """LockedDropout (rnn/utils.py): the units dropped before the decoder are the same at every
    time step of a sequence, and differ between sequences; kept units are scaled by 1/(1-p)."""
    cell = DartsRnnCell(genotype=PUBLISHED["DARTS_V1"], ninp=16, nhid=16, dropouth=0.0, dropoutx=0.0)
    model = RnnLanguageModel(cell=cell, ntoken=7, dropout=0.5, dropouti=0.0, dropoute=0.0).train()
    seen: list[torch.Tensor] = []
    model.decoder.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0].detach()))
    torch.manual_seed(0)
    tokens = torch.randint(7, (3, 5))  # (B, T)
    model(tokens)
    dropped = seen[0] == 0  # (T, B, nhid)
    assert dropped.any() and torch.equal(dropped, dropped[:1].expand_as(dropped))
    assert not torch.equal(dropped[0, 0], dropped[0, 1])
    model.eval()
    model(tokens)
    assert not (seen[1] == 0).any()  # the zeros came from dropout


# --- published genotypes and the PTB model's size --------------------------------------------


def test_published_genotypes_are_the_authors() -> None:
    # quark0/darts rnn/genotypes.py, verbatim (concat=range(1, 9)).
    assert PUBLISHED["DARTS_V2"].to_dict() == {
        "recurrent": [["sigmoid", 0], ["relu", 1], ["relu", 1], ["identity", 1], ["tanh", 2],
                      ["sigmoid", 5], ["tanh", 3], ["relu", 5]],
        "concat": [1, 2, 3, 4, 5, 6, 7, 8],
    }
    assert PUBLISHED["DARTS_V1"].recurrent == (
        ("relu", 0), ("relu", 1), ("tanh", 2), ("relu", 3), ("relu", 4), ("identity", 1), ("relu", 5),
        ("relu", 1),
    )
    space = SPACES.create("darts_rnn")
    assert space.parse("DARTS") == PUBLISHED["DARTS_V2"]  # DARTS = DARTS_V2 in the file
    assert all(space.contains(g) for g in PUBLISHED.values())


@pytest.mark.parametrize("name", ["DARTS_V1", "DARTS_V2"])
def test_ptb_model_has_the_code_s_parameter_count(name: str) -> None:
    """rnn/model.py at rnn/train.py's sizes (ntoken 10000, ninp = nhid = 850), by hand:
    embedding 10000 x 850 (the decoder's weight is tied to it), decoder bias 10000,
    W0 (850 + 850) x 1700, and eight W_i of 850 x 1700. The README reports 23M."""
    ntoken, n = 10_000, 850
    by_hand = ntoken * n + ntoken + (n + n) * 2 * n + 8 * n * 2 * n
    assert by_hand == 22_960_000
    model = SPACES.create("darts_rnn").build(PUBLISHED[name], PTB)
    assert count_params(model) == by_hand
    assert round(by_hand / 1e6) == 23


def test_search_model_has_the_code_s_parameter_count() -> None:
    """rnn/model_search.py at rnn/train_search.py's sizes (300 units): the same weights, a
    BatchNorm without parameters, and alpha: 36 edges x 5 activations."""
    supernet = build_supernet(SPACES.create("darts_rnn"), PTB)
    n = 300
    weights = 10_000 * n + 10_000 + 2 * n * 2 * n + 8 * n * 2 * n
    assert sum(p.numel() for p in supernet.weights()) == weights
    assert supernet.alpha.shape == (36, 5)
    assert count_params(supernet) == weights + 36 * 5


def test_describe_prints_the_parameter_count(capsys: pytest.CaptureFixture[str]) -> None:
    from raynas.cli import main

    assert main(["describe", "--space", "darts_rnn", "--genotype", "DARTS_V2"]) == 0
    out = capsys.readouterr().out
    assert "22,960,000" in out and "ptb" in out
    assert main(["describe", "--space", "darts_rnn", "--genotype", "DARTS_V1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == 22_960_000


# --- genotype derivation ---------------------------------------------------------------------


def test_genotype_derivation_takes_the_strongest_edge_and_its_strongest_activation() -> None:
    acts = ("none", "tanh", "relu", "sigmoid", "identity")
    w = torch.full((6, 5), 0.1)  # 3 nodes: edges (node 1: 0), (node 2: 0, 1), (node 3: 0, 1, 2)
    w[0] = torch.tensor([0.9, 0.02, 0.03, 0.01, 0.04])  # none is ignored: identity
    w[1] = torch.tensor([0.0, 0.5, 0.1, 0.1, 0.3])      # node 2 from 0: tanh 0.5
    w[2] = torch.tensor([0.0, 0.1, 0.6, 0.2, 0.1])      # node 2 from 1: relu 0.6 (strongest)
    w[3] = torch.tensor([0.95, 0.01, 0.01, 0.02, 0.01])  # node 3 from 0: only none is strong
    w[4] = torch.tensor([0.0, 0.2, 0.2, 0.4, 0.2])      # node 3 from 1: sigmoid 0.4
    w[5] = torch.tensor([0.0, 0.1, 0.4, 0.3, 0.2])      # node 3 from 2: relu 0.4 ties, lower wins
    assert derive_recurrent(w, acts, 3) == (("identity", 0), ("relu", 1), ("sigmoid", 1))

    net = DartsRnnSupernet(ntoken=5, nhid=2, nodes=3, activations=acts, dropout=0, dropouth=0,
                           dropoutx=0, dropouti=0, dropoute=0)
    with torch.no_grad():
        net.alpha.copy_(w.clamp_min(1e-6).log())  # softmax(log w) = w / sum(w)
    assert net.genotype() == DartsRnnGenotype((("identity", 0), ("relu", 1), ("sigmoid", 1)), (1, 2, 3))


# --- the record: JSON round trip and bad input -----------------------------------------------


def test_json_round_trip_key_and_canonical_concat(tmp_path: Path) -> None:
    space = SPACES.create("darts_rnn")
    g = PUBLISHED["DARTS_V1"]
    back = Architecture.from_json(g.to_json())
    assert back == g and back.key() == g.key() and back.key().startswith("darts_rnn-")
    assert space.parse(g.to_json()) == g
    path = tmp_path / "cell.json"
    path.write_text(json.dumps(g.to_dict()))  # the published form, without "space"
    assert space.parse(str(path)) == g
    shuffled = DartsRnnGenotype(g.recurrent, tuple(reversed(g.concat)))
    assert shuffled.key() == g.key() and PUBLISHED["DARTS_V2"].key() != g.key()
    assert space.decode(space.encode(g)) == g
    assert str(g).startswith("Genotype(recurrent=[('relu', 0)")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"recurrent": [["gelu", 0]], "concat": [1]},
         r"recurrent\[0\]: unknown activation 'gelu'; choose one of: tanh, relu, sigmoid, identity"),
        ({"recurrent": [["none", 0]], "concat": [1]}, r"unknown activation 'none'"),
        ({"recurrent": [["relu", 0], ["tanh", 2]], "concat": [1, 2]},
         r"recurrent\[1\]: node 2 cannot take state 2; allowed predecessors are 0..1"),
        ({"recurrent": [["relu", -1]], "concat": [1]}, r"node 1 cannot take state -1"),
        ({"recurrent": [["relu", 0]], "concat": [2]}, r"concat \[2\] must name states in 0..1"),
        ({"recurrent": [["relu", 0]]}, r"missing: concat"),
        ({"recurrent": [["relu", 0]], "concat": [1], "normal": []}, r"unknown: normal"),
        ({"recurrent": [["relu"]], "concat": [1]}, r"malformed darts_rnn genotype"),
    ],
)
def test_bad_genotypes_name_the_bad_part(data: dict, message: str) -> None:
    with pytest.raises(ArchitectureError, match=message):
        DartsRnnGenotype.from_dict(data)


def test_parse_errors_name_what_is_allowed() -> None:
    space = SPACES.create("darts_rnn")
    with pytest.raises(ArchitectureError, match=r"unknown genotype 'ENAS'; published genotypes: DARTS, "):
        space.parse("ENAS")
    with pytest.raises(ArchitectureError, match=r"architecture of space 'darts', not darts_rnn"):
        space.parse(SPACES.create("darts").parse("DARTS_V2").to_json())
    with pytest.raises(ConfigError, match=r"space\.activations: unknown activation 'gelu'"):
        DartsRnnSpaceConfig(activations=("none", "gelu"))
    with pytest.raises(ConfigError, match="one recurrent layer"):
        space.build(PUBLISHED["DARTS_V2"], PTB, channels=4, layers=2)


# --- the PTB loader ----------------------------------------------------------------------------

def test_ptb_vocabulary_tokens_and_windows(tmp_path: Path) -> None:
    data = DATASETS.create("ptb", PtbConfig(path=str(write_ptb(tmp_path / "penn")), bptt=4))
    words = [w for line in PTB_TRAIN.splitlines() for w in [*line.split(), "<eos>"]]
    assert words[:7] == ["the", "cat", "sat", "on", "the", "mat", "<eos>"] and len(words) == 15
    vocabulary = list(dict.fromkeys(words))  # order of first appearance, as data.py's Dictionary
    assert list(data.vocabulary) == vocabulary
    assert data.info.num_classes == len(vocabulary) == 10 and data.info.image_size == 4
    assert data.train_tokens.tolist() == [vocabulary.index(w) for w in words]
    windows = data.train_set()
    assert len(windows) == (15 - 1) // 4 == 3
    x, y = windows[1]
    assert x.tolist() == data.train_tokens[4:8].tolist() and y.tolist() == data.train_tokens[5:9].tolist()
    # valid: a word the training file lacks becomes <unk>; <eos> ends every line
    valid = [vocabulary[i] for i in data.encode("valid").tolist()]
    assert valid == ["the", "cat", "ran", "<eos>", "a", "<unk>", "sat", "<eos>"]
    test = [vocabulary[i] for i in data.test_set().tokens.tolist()]
    assert test == ["the", "<unk>", "<eos>"] and len(data.test_set()) == 0  # 3 tokens < one window + 1


def test_ptb_missing_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"ptb\.train\.txt"):
        DATASETS.create("ptb", PtbConfig(path=str(tmp_path / "nowhere")))
    data = DATASETS.create("ptb", PtbConfig(path=str(write_ptb(tmp_path / "penn", test=False))))
    with pytest.raises(DataError, match=r"penn/ptb\.test\.txt' is missing"):
        data.test_set()
    with pytest.raises(ConfigError, match=r"data\.path"):
        PtbConfig()
    with pytest.raises(ConfigError, match=r"data\.bptt"):
        PtbConfig(path="x", bptt=0)


# --- a tiny search through the real entry point ---------------------------------------------------


def tiny_ptb_job(tmp_path: Path, *overrides: str, **sections: dict[str, Any]) -> Any:
    """The job file, pointed at a random 12-word corpus in PTB's format, with an 8-unit, 3-node
    supernet (and other sections, such as another strategy, if given)."""
    from raynas.config import load_yaml
    from raynas.runs.jobs import parse_job

    folder = tmp_path / "penn"
    folder.mkdir()
    rng = torch.Generator().manual_seed(0)
    words = [f"w{i}" for i in range(12)]
    lines = [" ".join(words[int(i)] for i in torch.randint(12, (8,), generator=rng)) for _ in range(30)]
    (folder / "ptb.train.txt").write_text("\n".join(lines) + "\n")
    (folder / "ptb.valid.txt").write_text("\n".join(lines[:12]) + "\n")  # alpha's text
    job = Path(__file__).parents[1] / "jobs" / "darts_rnn_ptb.yaml"
    raw = load_yaml(job, [
        f"data.path={folder}", "data.bptt=6", "data.batch_size=8", "space.channels=8", "space.nodes=3",
        "train.epochs=2", "execution.backend=local",
        f"tracking.tracking_uri={mlflow_store(tmp_path)}",
        f"tracking.output_dir={tmp_path / 'runs'}", *overrides,
    ])
    return parse_job({**raw, **sections})


def test_tiny_first_order_search_on_ptb_returns_a_genotype_of_the_space(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from raynas.runs import run_search

    config = tiny_ptb_job(tmp_path, "strategy.order=1")
    lines: list[str] = []
    result = run_search(config, echo=lines.append)
    space = SPACES.create("darts_rnn", config.space.config)
    assert isinstance(result.architecture, DartsRnnGenotype) and space.contains(result.architecture)
    m = result.metrics
    assert math.isfinite(m["train_loss"]) and math.isfinite(m["valid_loss"])
    assert 0 <= m["valid_acc"] <= 1
    assert math.isclose(m["valid_ppl"], math.exp(m["valid_loss"]))  # perplexity, as the papers report
    assert "ppl" in next(line for line in lines if line.startswith("epoch   2/2"))
    # The papers' network of the found 3-node cell on PTB (850 units), counted by hand.
    assert result.params_cifar10 == 10_000 * 850 + 10_000 + 1700 * 1700 + 3 * 850 * 1700
    client = MlflowClient(config.tracking.tracking_uri)
    assert len(client.get_metric_history(result.run_id, "valid_loss")) == 2
    assert any("epoch   2/2" in line for line in lines)


def test_second_order_search_moves_alpha_and_derives_a_genotype(tmp_path: Path) -> None:
    """The unrolled gradient on the recurrent supernet (the search worker, without tracking)."""
    from raynas.runs.supernet_worker import SupernetWorker

    search = SupernetWorker(tiny_ptb_job(tmp_path, "strategy.order=2"))
    assert search.supernet.alpha.shape == (6, 5)  # 3 nodes: 1 + 2 + 3 edges
    before = search.supernet.alpha.detach().clone()
    report = search.run_epoch()
    assert not torch.equal(search.supernet.alpha.detach(), before)
    assert math.isfinite(report.metrics["valid_loss"])
    assert search.space.contains(report.architecture)
    json.dumps(report.arch_weights)


def test_milenas_sizes_the_found_cell_as_the_ptb_model(tmp_path: Path) -> None:
    """MiLeNAS's model-size tracking builds the papers' network of the space: PTB's, not CIFAR's."""
    from raynas.runs.supernet_worker import SupernetWorker

    search = SupernetWorker(tiny_ptb_job(tmp_path, strategy={"name": "milenas"}))
    report = search.run_epoch()
    assert report.metrics["eval_params"] == 10_000 * 850 + 10_000 + 1700 * 1700 + 3 * 850 * 1700


def test_a_single_path_computes_what_the_mixture_computes_with_one_hot_weights() -> None:
    """set_path (one-shot searches such as ENAS on PTB): node i from its one predecessor through
    its one activation, the dense cell's arithmetic with every other weight zero."""
    torch.manual_seed(0)
    acts = ("none", "tanh", "relu", "sigmoid", "identity")
    net = DartsRnnSupernet(ntoken=7, nhid=4, nodes=3, activations=acts, dropout=0, dropouth=0.2,
                           dropoutx=0.2, dropouti=0, dropoute=0)
    genotype = DartsRnnGenotype((("relu", 0), ("sigmoid", 0), ("identity", 2)), (1, 2, 3))
    cell = net.search_cell[0]
    onehot = torch.zeros(6, 5)  # edges ordered node by node: node i's predecessors 0..i
    for row, (name, j) in zip((0, 1, 3), genotype.recurrent, strict=True):
        onehot[row + j, acts.index(name)] = 1.0
    x, h = torch.randn(5, 4), torch.randn(5, 4)
    x_mask, h_mask = (torch.rand(5, 4) > 0.2).float(), (torch.rand(5, 4) > 0.2).float()
    cell.eval()  # BatchNorm on running statistics: both passes see the same normalisation
    cell.weights = onehot
    dense = cell.step(x, h, x_mask, h_mask)
    net.set_path(genotype)
    torch.testing.assert_close(cell.step(x, h, x_mask, h_mask), dense)
    logits = net(torch.randint(7, (2, 5)))  # the language model runs on the path alone
    assert logits.shape == (2, 7, 5)
    logits.logsumexp(1).sum().backward()
    assert net.alpha.grad is None and cell.Ws[1].grad is not None  # node 1 (sigmoid, from 0)
    net.set_path(None)
    with pytest.raises(ArchitectureError, match="no path of this supernet"):
        net.set_path(DartsRnnGenotype((("relu", 0),), (1,)))


def test_enas_searches_recurrent_cells_with_shared_weights(tmp_path: Path) -> None:
    """ENAS's PTB experiment in miniature: the controller samples cells, the shared supernet
    trains on them and scores them with inherited weights (perplexity: exp of the loss)."""
    from raynas.runs import run_search

    config = tiny_ptb_job(
        tmp_path, "train.epochs=2",
        strategy={"name": "enas", "controller_epochs": 2, "controller_batch": 2, "controller_steps": 1,
                  "derive_samples": 2},
        evaluator={"name": "supernet", "bn_batches": 1, "valid_batches": 1},
    )
    result = run_search(config, echo=lambda _: None)
    space = SPACES.create("darts_rnn", config.space.config)
    assert space.contains(result.architecture)
    assert math.isfinite(result.metrics["valid_loss"])
    # Every candidate's recurrent cell width and depth (Shu et al.'s, read on the recurrent cell)
    # in its Parquet row, and the found cells against random cells in the run.
    rows = ResultsStore(Path(config.tracking.output_dir) / "results").read_frame()
    assert len(rows) > 0
    for _, row in rows.iterrows():
        shape = space.cell_shape(Architecture.from_json(row["architecture"]))
        assert {k: row[f"metric.{k}"] for k in shape} == shape
    client = MlflowClient(config.tracking.tracking_uri)
    assert "cell_shapes.png" in {a.path for a in client.list_artifacts(result.run_id)}
