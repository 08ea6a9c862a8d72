"""The DARTS recurrent space: the cell's math against a hand computation, the published genotypes
and the parameter count of the PTB model, genotype derivation from alphas, the PTB loader on files
in the real format, and a tiny search through the real search entry point.

Published facts come from quark0/darts: ``rnn/genotypes.py`` (DARTS_V1, DARTS_V2), ``rnn/model.py``
(the cell and the language model), ``rnn/train.py`` (850 units) and the README (PTB: 23M params).
"""

from __future__ import annotations

import copy
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
    # One search: the job's choice among four seeds' cells is tests/test_selection.py's.
    raw = {k: v for k, v in raw.items() if k not in ("seeds", "final")}
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


# --- retraining a found cell as rnn/train.py does --------------------------------------------


def tiny_language_model(*, dropout: float = 0.0, seed: int = 0) -> RnnLanguageModel:
    """DARTS_V2's language model at 4 units over 10 words, with only the output dropout."""
    torch.manual_seed(seed)
    cell = DartsRnnCell(genotype=PUBLISHED["DARTS_V2"], ninp=4, nhid=4, dropouth=0.0, dropoutx=0.0)
    return RnnLanguageModel(cell=cell, ntoken=10, dropout=dropout, dropouti=0.0, dropoute=0.0)


def windows(count: int, *, streams: int = 2, length: int = 3, seed: int = 1) -> list[Any]:
    """``count`` consecutive windows (tokens, targets), each (streams, length), of a random text."""
    rng = torch.Generator().manual_seed(seed)
    text = torch.randint(10, (streams, count * length + 1), generator=rng)  # (B, N + 1)
    return [(text[:, i * length:(i + 1) * length], text[:, i * length + 1:(i + 1) * length + 1])
            for i in range(count)]


def sgd_by_hand(model: torch.nn.Module, loss: torch.Tensor, lr: float) -> None:
    grads = torch.autograd.grad(loss, list(model.parameters()))
    with torch.no_grad():
        for p, g in zip(model.parameters(), grads, strict=True):
            p -= lr * g


def test_retraining_carries_the_hidden_state_from_window_to_window_detached() -> None:
    """rnn/train.py: each window starts from the state the previous one ended in, detached
    (``repackage_hidden``); written out: a step on window 1 from zeros, then a step on window 2
    from window 1's last state, as computed before the first step."""
    from raynas.train.language_model import train_language_model_epoch

    model, lr = tiny_language_model(), 0.5
    by_hand, from_zeros = copy.deepcopy(model), copy.deepcopy(model)
    (x1, y1), (x2, y2) = windows(2)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    metrics = train_language_model_epoch(model, opt, [(x1, y1), (x2, y2)], torch.device("cpu"),
                                         bptt=3, grad_clip=1e9)
    logits, outputs = by_hand.run_outputs(x1)
    loss1 = torch.nn.functional.cross_entropy(logits, y1)
    sgd_by_hand(by_hand, loss1, lr)
    loss2 = torch.nn.functional.cross_entropy(by_hand.run(x2, outputs[-1].detach())[0], y2)
    sgd_by_hand(by_hand, loss2, lr)
    for p, q in zip(model.parameters(), by_hand.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    mean = (loss1.item() + loss2.item()) / 2  # 6 tokens each
    assert metrics["train_loss"] == pytest.approx(mean, rel=1e-6)
    # Starting window 2 from zeros instead gives other weights: the test tells the two apart.
    sgd_by_hand(from_zeros, torch.nn.functional.cross_entropy(from_zeros.run(x1)[0], y1), lr)
    sgd_by_hand(from_zeros, torch.nn.functional.cross_entropy(from_zeros.run(x2)[0], y2), lr)
    assert not torch.allclose(from_zeros.cell.W0, model.cell.W0)


def test_ar_and_tar_are_added_to_the_loss_as_rnn_train_py_adds_them() -> None:
    """rnn/train.py's loss: ``raw_loss + alpha * dropped_h.pow(2).mean() + beta * (h[1:] -
    h[:-1]).pow(2).mean()``, AR on the cell's outputs after the output dropout, TAR on them
    before; here summed element by element, and one SGD step taken on it by hand."""
    from raynas.train.language_model import train_language_model_epoch

    model, lr, ar, tar = tiny_language_model(dropout=0.5), 0.5, 2.0, 3.0
    by_hand, plain = copy.deepcopy(model), copy.deepcopy(model)
    x, y = windows(1, length=4)[0]
    torch.manual_seed(7)  # the same dropout masks below
    train_language_model_epoch(model.train(), torch.optim.SGD(model.parameters(), lr=lr), [(x, y)],
                               torch.device("cpu"), bptt=4, grad_clip=1e9, ar=ar, tar=tar)
    torch.manual_seed(7)
    logits, raw, dropped = by_hand.train().run_dropped(x)  # (B, V, T), (T, B, H), (T, B, H)
    steps, streams, units = raw.shape
    assert not torch.equal(raw, dropped)  # the output dropout dropped something
    ar_sum = sum(dropped[t, b, h] ** 2 for t in range(steps) for b in range(streams) for h in range(units))
    tar_sum = sum((raw[t, b, h] - raw[t - 1, b, h]) ** 2
                  for t in range(1, steps) for b in range(streams) for h in range(units))
    loss = (torch.nn.functional.cross_entropy(logits, y) + ar * ar_sum / (steps * streams * units)
            + tar * tar_sum / ((steps - 1) * streams * units))
    sgd_by_hand(by_hand, loss, lr)
    for p, q in zip(model.parameters(), by_hand.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    torch.manual_seed(7)  # without the two terms, the step differs
    train_language_model_epoch(plain.train(), torch.optim.SGD(plain.parameters(), lr=lr), [(x, y)],
                               torch.device("cpu"), bptt=4, grad_clip=1e9)
    assert not torch.allclose(plain.cell.W0, model.cell.W0)


def test_the_switch_to_asgd_follows_the_nonmono_rule() -> None:
    """rnn/train.py after an SGD epoch: switch once ``len(best_val_loss) > nonmono and val_loss >
    min(best_val_loss[:-nonmono])``, then append the loss. With nonmono 2 on 5.0, 4.0, 4.5, 4.2,
    4.1: at 4.2 the best of all but the last two (5.0) is not beaten; at 4.1 it is 4.0, beaten."""
    from raynas.train.language_model import switches_to_asgd

    losses, history, switched = [5.0, 4.0, 4.5, 4.2, 4.1], [], []
    for loss in losses:
        switched.append(switches_to_asgd(history, loss, 2))
        history.append(loss)
    assert switched == [False, False, False, False, True]
    assert not any(switches_to_asgd(losses[:i], 9.0, 0) for i in range(5))  # 0: never


def scripted_evaluation(monkeypatch: pytest.MonkeyPatch, valid: list[Any], losses: list[float]) -> list[Any]:
    """Make the training's evaluation report ``losses`` on ``valid`` (one an epoch), recording the
    weights it is called with; the test text scores 1.0."""
    import raynas.train.language_model as lm

    seen: list[Any] = []
    scripted = iter(losses)

    def evaluate(model: torch.nn.Module, batches: Any, device: torch.device, **_: Any) -> dict[str, float]:
        seen.append([p.detach().clone() for p in model.parameters()])
        loss = next(scripted) if batches is valid else 1.0
        return {"valid_loss": loss, "valid_acc": 0.0, "valid_ppl": math.exp(loss)}

    monkeypatch.setattr(lm, "evaluate", evaluate)
    return seen


def test_training_switches_to_asgd_exactly_when_the_rule_says(monkeypatch: pytest.MonkeyPatch) -> None:
    """With nonmono 2 and the validation losses 5.0, 4.0, 4.5, 4.2, 4.1 (the rule's test above),
    epochs 1-5 train with SGD and the switch after epoch 5 makes epoch 6 train with
    ``torch.optim.ASGD(lr, t0=0, lambd=0, weight_decay)``, as rnn/train.py builds it."""
    from raynas.train.language_model import fit_language_model

    model, valid = tiny_language_model(), windows(1, seed=2)
    scripted_evaluation(monkeypatch, valid, [5.0, 4.0, 4.5, 4.2, 4.1, 4.0])
    epochs = list(fit_language_model(model, windows(2), valid, windows(1, seed=3), torch.device("cpu"),
                                     epochs=6, learning_rate=2.0, weight_decay=1e-4, grad_clip=0.25,
                                     bptt=3, nonmono=2))
    assert [metrics["asgd"] for metrics, _ in epochs] == [0, 0, 0, 0, 0, 1]
    assert [state["asgd"] for _, state in epochs] == [False] * 4 + [True] * 2
    group = epochs[-1][1]["optimizer"]["param_groups"][0]
    assert (group["t0"], group["lambd"], group["lr"], group["weight_decay"]) == (0, 0.0, 2.0, 1e-4)
    assert epochs[-1][1]["valid_history"] == [5.0, 4.0, 4.5, 4.2, 4.1]  # not appended after the switch


def test_asgd_epochs_are_evaluated_with_the_averaged_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """rnn/train.py swaps every parameter for ASGD's ``ax`` to evaluate, then back; after the last
    epoch the model holds the network of the lowest validation loss (here epoch 2's, before the
    switch: the later 4.0s do not beat it, ``val_loss < stored_loss``)."""
    from raynas.train.language_model import fit_language_model

    model, valid = tiny_language_model(), windows(1, seed=2)
    # nonmono 1: 5.5 after 5.0, 4.0 is worse than 5.0, the best of all but the last: switch after epoch 3
    seen = scripted_evaluation(monkeypatch, valid, [5.0, 4.0, 5.5, 4.0, 4.0])
    run = fit_language_model(model, windows(3), valid, windows(1, seed=3), torch.device("cpu"),
                             epochs=5, learning_rate=2.0, weight_decay=0.0, grad_clip=0.25, bptt=3, nonmono=1)
    states = [copy.deepcopy(state) for _, state in run]  # as yielded: they hold the live tensors
    assert [s["asgd"] for s in states] == [False, False, True, True, True]
    fourth = states[3]
    averaged = [fourth["optimizer"]["state"][i]["ax"] for i in range(len(seen[0]))]
    live = list(fourth["model"].values())
    for evaluated in seen[6:8]:  # epoch 4's validation and test passes
        for p, ax in zip(evaluated, averaged, strict=True):
            torch.testing.assert_close(p, ax)
    assert not all(torch.allclose(p, ax) for p, ax in zip(live, averaged, strict=True))
    for p, best in zip(model.parameters(), seen[2], strict=True):  # epoch 2's validation pass
        torch.testing.assert_close(p.detach(), best)


def test_the_trained_network_is_the_one_of_the_lowest_validation_loss(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """rnn/train.py saves the network whenever ``val_loss < stored_loss`` (the averaged weights
    after the switch) and, after training, loads the best saved one and tests it. Validation losses
    5.0, 4.0, 5.5 (the switch, nonmono 1), 3.0, 3.5: the network kept is epoch 4's averaged one,
    and every epoch reports the best so far."""
    from raynas.train.language_model import fit_language_model

    model, valid = tiny_language_model(), windows(1, seed=2)
    seen = scripted_evaluation(monkeypatch, valid, [5.0, 4.0, 5.5, 3.0, 3.5])
    run = fit_language_model(model, windows(3), valid, windows(1, seed=3), torch.device("cpu"),
                             epochs=5, learning_rate=2.0, weight_decay=0.0, grad_clip=0.25, bptt=3, nonmono=1)
    epochs = [metrics for metrics, _ in run]
    assert [m["asgd"] for m in epochs] == [0, 0, 0, 1, 1]
    assert [m["best_epoch"] for m in epochs] == [1, 2, 2, 4, 4]
    assert [m["best_valid_loss"] for m in epochs] == [5.0, 4.0, 4.0, 3.0, 3.0]
    assert epochs[-1]["best_test_loss"] == 1.0 and epochs[-1]["valid_loss"] == 3.5
    for p, best in zip(model.parameters(), seen[6], strict=True):  # epoch 4's validation pass
        torch.testing.assert_close(p.detach(), best)
    assert not all(torch.allclose(p, q) for p, q in zip(seen[6], seen[8], strict=True))  # not epoch 5's


def diverging_epochs(monkeypatch: pytest.MonkeyPatch, nan_calls: set[int]) -> list[Any]:
    """Make the training epochs numbered ``nan_calls`` (1-based calls) end with every weight NaN
    and a NaN loss; the others train for real. Returns each call's weights as it started them."""
    import raynas.train.language_model as lm

    started: list[Any] = []
    real = lm.train_language_model_epoch

    def epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, *args: Any, **kw: Any) -> dict:
        started.append(([p.detach().clone() for p in model.parameters()], type(optimizer).__name__,
                        copy.deepcopy(optimizer.state_dict())))
        metrics = real(model, optimizer, *args, **kw)
        if len(started) in nan_calls:
            with torch.no_grad():
                for p in model.parameters():
                    p.fill_(math.nan)
            metrics["train_loss"] = math.nan
        return metrics

    monkeypatch.setattr(lm, "train_language_model_epoch", epoch)
    return started


def test_a_nan_training_loss_rolls_back_to_the_network_kept_and_repeats_its_epoch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """rnn/train.py: a NaN loss in train() makes the loop load model.pt and optimizer.pt (saved
    when val_loss < stored_loss) and set ``epoch`` to misc.pt's, the epoch they were saved after.
    Validation losses 5.0, 4.0 (kept), then epoch 3 diverges: epoch 2 is trained again from epoch
    2's weights, and training goes on to epoch 4; nothing of the NaN epoch is reported."""
    from raynas.train.language_model import fit_language_model

    model, valid = tiny_language_model(), windows(1, seed=2)
    seen = scripted_evaluation(monkeypatch, valid, [5.0, 4.0, 4.5, 4.2, 4.1])
    started = diverging_epochs(monkeypatch, {3})
    run = fit_language_model(model, windows(2), valid, windows(1, seed=3), torch.device("cpu"),
                             epochs=4, learning_rate=2.0, weight_decay=0.0, grad_clip=0.25, bptt=3,
                             nonmono=10)
    epochs = [metrics for metrics, _ in run]
    assert [m["epoch"] for m in epochs] == [1, 2, 2, 3, 4]
    assert all(math.isfinite(m["train_loss"]) for m in epochs)
    assert len(started) == 6  # epochs 1, 2, 3 (NaN), 2 again, 3, 4
    kept = seen[2]  # epoch 2's validation pass: the weights kept
    for p, q in zip(started[3][0], kept, strict=True):  # the repeat starts from them
        torch.testing.assert_close(p, q)
    assert started[3][1] == "SGD"
    assert [m["best_epoch"] for m in epochs] == [1, 2, 2, 2, 2]
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_rollback_after_the_switch_restores_the_averaged_network_and_asgd_s_state(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After the switch rnn/train.py saves the averaged weights with ASGD's state (``ax`` among
    it), and a rollback rebuilds ASGD (the saved state has ``t0``) and loads that state. nonmono 1
    and losses 5.0, 4.0, 5.5 (the switch after epoch 3), 3.0 (kept: averaged), then epoch 5
    diverges and epoch 4 is trained again."""
    from raynas.train.language_model import fit_language_model

    model, valid = tiny_language_model(), windows(1, seed=2)
    seen = scripted_evaluation(monkeypatch, valid, [5.0, 4.0, 5.5, 3.0, 3.5, 3.2])
    started = diverging_epochs(monkeypatch, {5})
    # Three windows an epoch: ASGD's average lags its weights (its mu is 1 for the first two steps).
    run = fit_language_model(model, windows(3), valid, windows(1, seed=3), torch.device("cpu"),
                             epochs=5, learning_rate=2.0, weight_decay=0.0, grad_clip=0.25, bptt=3,
                             nonmono=1)
    states = [(m, copy.deepcopy(state)) for m, state in run]
    assert [m["epoch"] for m, _ in states] == [1, 2, 3, 4, 4, 5]
    assert [m["asgd"] for m, _ in states] == [0, 0, 0, 1, 1, 1]
    params, kind, optimizer_state = started[5]  # epoch 4 again
    for p, averaged in zip(params, seen[6], strict=True):  # epoch 4's validation: averaged weights
        torch.testing.assert_close(p, averaged)
    assert kind == "ASGD"
    kept = states[3][1]["best"]["optimizer"]["state"]
    assert kept and kept.keys() == optimizer_state["state"].keys()
    for i, saved in kept.items():
        torch.testing.assert_close(optimizer_state["state"][i]["ax"], saved["ax"])
        torch.testing.assert_close(optimizer_state["state"][i]["step"], saved["step"])
    # The average, not the weights epoch 5 started from.
    assert not all(torch.equal(p, a) for p, a in zip(started[4][0], params, strict=True))


def test_a_nan_in_the_first_epoch_is_one_error_naming_what_to_lower(monkeypatch: pytest.MonkeyPatch) -> None:
    from raynas.errors import RaynasError
    from raynas.train.language_model import fit_language_model

    model, valid = tiny_language_model(), windows(1, seed=2)
    scripted_evaluation(monkeypatch, valid, [5.0])
    diverging_epochs(monkeypatch, {1})
    run = fit_language_model(model, windows(2), valid, windows(1, seed=3), torch.device("cpu"),
                             epochs=2, learning_rate=2.0, weight_decay=0.0, grad_clip=0.25, bptt=3)
    with pytest.raises(RaynasError, match=r"not finite in epoch 1.*retrain\.learning_rate"):
        next(run)


def test_a_retraining_whose_loss_turns_nan_says_so_rolls_back_and_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through ``run_retrain``: epoch 3 diverges; the driver says so in one line, the epoch kept
    is trained again, and the retraining ends after its last epoch with finite scores."""
    from raynas.runs.jobs import load_retrain_job
    from raynas.runs.retrain import run_retrain

    job = Path(__file__).parents[1] / "jobs" / "retrain_darts_rnn_ptb.yaml"
    config = load_retrain_job(job, [
        f"data.path={write_ptb(tmp_path / 'penn')}", "data.bptt=2", "data.batch_size=2",
        "retrain.epochs=4", "retrain.channels=6", "retrain.valid_streams=2",
        "execution.backend=local", f"tracking.tracking_uri={mlflow_store(tmp_path)}",
        f"tracking.output_dir={tmp_path / 'runs'}",
    ])
    diverging_epochs(monkeypatch, {3})
    lines: list[str] = []
    result = run_retrain(config, echo=lines.append, fresh=True)
    epochs = [int(line.split()[1].split("/")[0]) for line in lines if line.startswith("epoch")]
    said = [line for line in lines if "not finite" in line]
    assert len(said) == 1 and said[0].startswith("the training loss was not finite in epoch 3: ")
    kept = int(said[0].split("kept after epoch ")[1].split(",")[0])
    assert kept in (1, 2) and epochs == [1, 2, *range(kept, 5)]
    # The line comes right before the repeated epoch's.
    assert lines.index(said[0]) + 1 == [i for i, line in enumerate(lines) if line.startswith("epoch")][2]
    assert math.isfinite(result.metrics["test_loss"]) and result.metrics["epoch"] == 4


def test_the_retraining_jobs_have_rnn_train_py_s_settings() -> None:
    """jobs/retrain_darts_rnn_ptb.yaml against quark0/darts rnn/train.py's argparse defaults (and
    its eval_batch_size 10, test_batch_size 1); the WikiText-2 transfer differs only where the
    paper's WikiText-2 settings do (700 units, dropouth 0.15, weight decay 5e-7)."""
    from raynas.runs.jobs import load_retrain_job

    jobs = Path(__file__).parents[1] / "jobs"
    ptb = load_retrain_job(jobs / "retrain_darts_rnn_ptb.yaml")
    wiki = load_retrain_job(jobs / "transfer_darts_rnn_wikitext2.yaml")
    for config, channels, dropouth, wdecay in ((ptb, 850, 0.25, 8e-7), (wiki, 700, 0.15, 5e-7)):
        r, space, data = config.retrain, config.space.config, config.data.config
        assert (config.seed, config.architecture, data.bptt, data.batch_size) == (1267, "DARTS_V2", 35, 64)
        assert (r.epochs, r.channels, r.learning_rate, r.momentum) == (8000, channels, 20.0, 0.0)
        assert (r.weight_decay, r.grad_clip, r.ar, r.tar, r.nonmono) == (wdecay, 0.25, 0, 1e-3, 5)
        assert (r.valid_streams, r.test_streams, r.optimizer) == (10, 1, "sgd")
        assert (space.dropout, space.dropouth, space.dropoutx, space.dropouti, space.dropoute) == (
            0.75, dropouth, 0.75, 0.2, 0.0)


def test_a_language_model_retraining_refuses_settings_rnn_train_py_lacks(tmp_path: Path) -> None:
    from raynas.runs.jobs import load_retrain_job
    from raynas.runs.retrain import run_retrain

    job = Path(__file__).parents[1] / "jobs" / "retrain_darts_rnn_ptb.yaml"
    for setting in ("retrain.optimizer=adamw", "retrain.momentum=0.9", "retrain.label_smoothing=0.1",
                    "execution.workers=2"):
        config = load_retrain_job(job, [f"data.path={write_ptb(tmp_path / 'penn')}", setting])
        with pytest.raises(ConfigError, match=setting.split("=")[0].replace(".", r"\.")):
            run_retrain(config, echo=print)


def test_training_windows_vary_as_rnn_train_py_draws_them(tmp_path: Path) -> None:
    """rnn/train.py: ``bptt`` w.p. 0.95 else ``bptt / 2``, then ``max(5, int(normal(that, 5)))``,
    at most ``bptt + 20``; windows follow each other through the streams to the text's end."""
    from raynas.data.ptb import TrainingWindows

    sampler = TrainingWindows(100_000, 35, torch.Generator().manual_seed(0))
    keys = [key for [key] in sampler]
    rng = torch.Generator().manual_seed(0)  # the same draws, through the formula
    expected = []
    for _ in keys:
        base = 35 if float(torch.rand((), generator=rng)) < 0.95 else 17.5
        expected.append(min(max(5, int(base + 5 * float(torch.randn((), generator=rng)))), 55))
    assert [size for _, size in keys] == expected
    assert [start for start, _ in keys] == [sum(expected[:i]) for i in range(len(keys))]
    assert min(expected) == 5  # the lower bound is reached in ~2,900 windows (the upper needs 4 sigma)
    assert 0.03 < sum(size < 25 for size in expected) / len(expected) < 0.08  # the half-length draws
    data = DATASETS.create("ptb", PtbConfig(path=str(write_ptb(tmp_path / "penn")), bptt=5, batch_size=2))
    loader = data.stream_loader("train", 2, seed=0, lengths="train")
    tokens = torch.cat([x for x, _ in loader], 1)  # 15 tokens in 2 streams of 7, window after window
    read = tokens.shape[1]  # rnn/train.py stops once fewer than 2 tokens are left: at least 5 read
    assert read >= 5 and torch.equal(tokens, data.train_tokens[:14].view(2, 7)[:, :read])


def test_an_interrupted_language_model_retraining_resumes_where_it_stopped(tmp_path: Path) -> None:
    """The retraining's checkpoint holds which optimiser it was at (SGD or ASGD with its
    averages), the validation losses the switch reads and the window-length generator: crashed
    after epoch 4, the first with ASGD here, and resumed, it ends as the uninterrupted run
    (dropouts off: their masks come from torch's global generator, which no checkpoint holds)."""
    from raynas.runs.jobs import load_retrain_job
    from raynas.runs.retrain import run_retrain

    job = Path(__file__).parents[1] / "jobs" / "retrain_darts_rnn_ptb.yaml"
    config = load_retrain_job(job, [
        f"data.path={write_ptb(tmp_path / 'penn')}", "data.bptt=2", "data.batch_size=2",
        "retrain.epochs=5", "retrain.channels=6", "retrain.nonmono=1", "retrain.valid_streams=2",
        "retrain.learning_rate=5.0",
        *(f"space.{d}=0.0" for d in ("dropout", "dropouth", "dropoutx", "dropouti")),
        "execution.backend=local", f"tracking.tracking_uri={mlflow_store(tmp_path)}",
        f"tracking.output_dir={tmp_path / 'runs'}",
    ])
    first: list[str] = []
    reference = run_retrain(config, echo=first.append, fresh=True)
    assert {"valid_loss", "valid_ppl", "test_loss", "test_ppl", "asgd"} <= set(reference.metrics)
    averaged = ["averaged SGD" in line for line in first if line.startswith("epoch")]
    assert averaged == [False, False, False, True, True]  # the switch after epoch 3

    def crash_after_fourth_epoch(line: str) -> None:
        if line.startswith("epoch   4/"):
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        run_retrain(config, echo=crash_after_fourth_epoch, fresh=True)
    lines: list[str] = []
    resumed = run_retrain(config, echo=lines.append)
    assert next(line for line in lines if line.startswith("epoch")).startswith("epoch   5/")
    assert resumed.metrics == pytest.approx(reference.metrics, rel=1e-5, abs=1e-6)
