"""ENAS's recurrent cell space (``enas_rnn``): the arc string, the language model's size against a
count of the variables ``melodyguan/enas``'s ``src/ptb/ptb_enas_child.py`` creates for a fixed arc,
the cell's step and the word dropout recomputed here from ``_rhn_fixed`` and ``_model``, and the
final script's settings in the retraining job."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from raynas.errors import ArchitectureError, ConfigError
from raynas.profile import count_params
from raynas.runs.jobs import load_retrain_job
from raynas.spaces import SPACES
from raynas.spaces.enas_rnn import EnasRnnCell, EnasRnnSpaceConfig, word_mask
from raynas.types import DatasetInfo

FINAL_ARC = "0 0 0 1 1 2 1 2 0 2 0 5 1 1 0 6 1 8 1 8 1 8 1"  # scripts/ptb_final.sh
PTB = DatasetInfo("ptb", 1, 10_000, 35)
JOBS = Path(__file__).parents[1] / "jobs"


def code_variables(arc: str, *, hidden: int, vocab: int) -> int:
    """``_build_params`` with a fixed arc: ``w_prev`` [2H, 2H], ``w_skip[l]`` [H, 2H] for every node
    after the first, the embedding [V, H] (the decoder is the embedding); the starting states are
    not trainable."""
    nodes = (len(arc.split()) + 1) // 2
    return 2 * hidden * 2 * hidden + (nodes - 1) * hidden * 2 * hidden + vocab * hidden


def test_the_authors_arc_reads_as_their_script_writes_it() -> None:
    space = SPACES.create("enas_rnn")
    cell = space.parse("ENAS")
    assert cell.arc() == FINAL_ARC
    # By hand from the string: node 0 tanh; node 1 reads 0 (tanh), node 2 reads 1 (relu), ...
    assert cell.activations[:3] == ("tanh", "tanh", "relu") and cell.inputs[:3] == (0, 1, 2)
    assert cell.loose_ends == (3, 4, 7, 9, 10, 11)
    # DARTS's rnn/genotypes.py transcribes a different cell; its concat is that cell's loose ends.
    assert space.parse("ENAS_darts_genotypes").loose_ends == (2, 5, 6, 9, 10, 11)
    assert space.decode(space.encode(cell)) == cell
    assert [int(v) for v in FINAL_ARC.split()] == list(space.encode(cell))
    with pytest.raises(ArchitectureError, match="odd number of integers"):
        EnasRnnCell.parse("0 0")
    with pytest.raises(ArchitectureError, match="node 2 reads node 2"):
        EnasRnnCell(("tanh",) * 3, (0, 2))


def test_the_language_model_has_the_parameters_the_codes_variables_count() -> None:
    """At ptb_final.sh's size (748 units, 12 nodes, PTB's 10,000 words): 22,027,104 trainable
    variables as _build_params creates them (the paper's Table 1 gives 24M; README says 23M for
    DARTS's own model)."""
    space = SPACES.create("enas_rnn")
    model = space.build(space.parse("ENAS"), PTB)
    assert count_params(model) == code_variables(FINAL_ARC, hidden=748, vocab=10_000) == 22_027_104
    assert model.decoder.bias is None and model.decoder.weight is model.encoder.weight
    rng = random.Random(0)
    small = SPACES.create("enas_rnn", EnasRnnSpaceConfig(nodes=5))
    for _ in range(3):
        arch = small.sample(rng)
        net = small.build(arch, DatasetInfo("ptb", 1, 50, 35), channels=6)
        assert count_params(net) == code_variables(arch.arc(), hidden=6, vocab=50)
    with pytest.raises(ConfigError, match="one recurrent layer"):
        space.build(space.parse("ENAS"), PTB, layers=2)


def rhn_fixed(arc: list[int], x: torch.Tensor, prev_s: torch.Tensor, w_prev: torch.Tensor,
              w_skip: list[torch.Tensor], x_mask: torch.Tensor, s_mask: torch.Tensor) -> torch.Tensor:
    """_rhn_fixed, written out from ptb_enas_child.py (is_training, with its masks)."""
    funcs = [torch.tanh, torch.relu, lambda v: v, torch.sigmoid]
    hidden = prev_s.shape[1]
    ht = torch.cat([x * x_mask, prev_s * s_mask], 1) @ w_prev
    h, t = ht[:, :hidden], ht[:, hidden:]
    h = funcs[arc[0]](h)
    t = torch.sigmoid(t)
    s = prev_s + t * (h - prev_s)
    layers = [s]
    start_idx = 1
    used = [0] * (len(w_skip) + 1)
    for rhn_layer_id in range(1, len(w_skip) + 1):
        prev_idx, func_idx = arc[start_idx], arc[start_idx + 1]
        used[prev_idx] = 1
        prev_s = layers[prev_idx]
        ht = (prev_s * s_mask) @ w_skip[rhn_layer_id - 1]
        h, t = ht[:, :hidden], ht[:, hidden:]
        h = funcs[func_idx](h)
        t = torch.sigmoid(t)
        s = prev_s + t * (h - prev_s)
        layers.append(s)
        start_idx += 2
    kept = [layer for u, layer in zip(used, layers, strict=True) if u == 0]
    return sum(kept) / sum(1 - u for u in used)


def test_the_cell_steps_as_rhn_fixed() -> None:
    torch.manual_seed(0)
    space = SPACES.create("enas_rnn", EnasRnnSpaceConfig(nodes=6))
    for seed in range(3):
        arch = space.sample(random.Random(seed))
        layer = space.build(arch, DatasetInfo("ptb", 1, 30, 35), channels=5).cell
        x, h = torch.randn(4, 5), torch.randn(4, 5)
        x_mask, s_mask = torch.rand(4, 5).round() * 2, torch.rand(4, 5).round() * 4 / 3
        arc = [int(v) for v in arch.arc().split()]
        expected = rhn_fixed(arc, x, h, layer.W0, list(layer.Ws), x_mask, s_mask)
        torch.testing.assert_close(layer.step(x, h, x_mask, s_mask), expected)


def test_a_word_dropped_in_a_sequence_stays_dropped_where_it_comes_again() -> None:
    """_model's e_mask: floor(u + keep) / keep, then zero at step t where the same word was dropped
    at an earlier step of the same sequence (the original mask's zeros), row by row."""
    torch.manual_seed(3)
    tokens = torch.tensor([[5, 6, 5, 7, 5, 6], [5, 5, 5, 5, 5, 5], [1, 2, 3, 4, 1, 2]])
    for _ in range(20):
        state = torch.get_rng_state()
        mask = word_mask(tokens, 0.5)
        torch.set_rng_state(state)
        drawn = torch.floor(torch.rand(tokens.shape) + 0.5) / 0.5  # the same draw, before the rule
        expected = drawn.clone()
        for b in range(tokens.shape[0]):  # the code's loop over steps
            for t in range(1, tokens.shape[1]):
                if any(tokens[b, s] == tokens[b, t] and drawn[b, s] == 0 for s in range(t)):
                    expected[b, t] = 0
        assert torch.equal(mask, expected)
        assert set(mask.unique().tolist()) <= {0.0, 2.0}
    # The model drops words in training only, and nowhere else.
    space = SPACES.create("enas_rnn", EnasRnnSpaceConfig(nodes=3, dropoutx=0.0, dropouth=0.0))
    model = space.build(space.sample(random.Random(0)), DatasetInfo("ptb", 1, 8, 35), channels=4).eval()
    x = torch.randint(8, (2, 6))
    torch.testing.assert_close(model(x), model(x))


def test_the_retraining_job_has_ptb_final_sh_s_settings_on_a_mean_loss() -> None:
    """ptb_final.sh trains the sum over a window's 35 words of the loss per sequence (_build_train:
    reduce_sum / batch_size) with lr 20, gradients clipped at global norm 0.25, L2 5e-7 on the sum
    of squares and the slowness term 1e-3 * sum((h_{t+1} - h_t)^2) / batch_size; raynas's language
    model trains the mean per word, so the same steps are lr 20 * 35, a clip of 0.25 / 35, weight
    decay 2 * 5e-7 / 35 and tar 1e-3 * 34 * 748 / 35 (tar weighs the mean over 34 * 748 terms)."""
    config = load_retrain_job(JOBS / "retrain_enas_ptb.yaml")
    cfg, space = config.retrain, config.space.config
    assert config.architecture == "ENAS"
    assert (config.data.config.bptt, config.data.config.batch_size) == (35, 64)
    assert (cfg.channels, cfg.epochs, cfg.momentum, cfg.nonmono) == (748, 2000, 0.0, 0)
    assert cfg.learning_rate == pytest.approx(20 * 35)
    assert cfg.grad_clip == pytest.approx(0.25 / 35, rel=1e-3)
    assert cfg.weight_decay == pytest.approx(2 * 5e-7 / 35, rel=1e-3)
    assert cfg.tar == pytest.approx(1e-3 * 34 * 748 / 35, rel=1e-3)
    assert (space.dropoute, space.dropoutx, space.dropouth) == pytest.approx((0.21, 0.75, 0.25))
