"""ENAS's recurrent cell space (``enas_rnn``): the arc string, the language model's size against a
count of the variables ``melodyguan/enas``'s ``src/ptb/ptb_enas_child.py`` creates for a fixed arc,
the cell's step and the word dropout recomputed here from ``_rhn_fixed`` and ``_model``, and the
final script's settings in the retraining job."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from raynas.errors import ArchitectureError, ConfigError
from raynas.profile import count_params
from raynas.runs.jobs import load_retrain_job
from raynas.spaces import SPACES
from raynas.spaces.enas_rnn import EnasRnnCell, EnasRnnSpaceConfig, word_mask
from raynas.types import DatasetInfo
from tests.fixtures import write_random_ptb

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
    # --child_lr_dec_start=14, --child_lr_dec_rate=0.9991 every epoch, --child_lr_dec_min=0.001
    assert (cfg.lr_gamma, cfg.decay_start) == (0.9991, 14)
    assert cfg.min_learning_rate == pytest.approx(0.001 * 35)
    assert (space.dropoute, space.dropoutx, space.dropouth) == pytest.approx((0.21, 0.75, 0.25))


def test_the_shared_child_has_weights_per_input_and_activation_and_the_codes_batchnorm() -> None:
    """_rhn_enas: node 0's w_prev rows by its activation, node l's w_skip[l] rows by (input,
    activation); ptb_ops.batch_norm (epsilon 1, decay 0.999) after every projection and on the
    loose ends' mean, its moving statistics read in evaluation."""
    from raynas.supernet import build_supernet

    torch.manual_seed(0)
    space = SPACES.create("enas_rnn", EnasRnnSpaceConfig(channels=6, nodes=4, dropoute=0.0))
    child = build_supernet(space, DatasetInfo("ptb", 1, 20, 35))
    path = EnasRnnCell(("relu", "tanh", "sigmoid", "identity"), (0, 0, 2))  # loose ends 1 and 3
    child.set_path(path)
    child.train()
    child(torch.randint(20, (4, 5))).logsumexp(1).sum().backward()
    layer = child.cell
    assert [bool(g.abs().sum() > 0) for g in layer.W0.grad] == [False, True, False, False]  # relu: f 1
    trained = {(node, p, f) for node, w in enumerate(layer.Ws, start=1) for p in range(node) for f in range(4)
               if w.grad[p, f].abs().sum() > 0}
    assert trained == {(1, 0, 0), (2, 0, 3), (3, 2, 2)}  # tanh on 0, sigmoid on 0, identity on 2
    assert all(bn.eps == 1.0 and bn.momentum == pytest.approx(0.001) for bn in [*layer.bns, layer.out_bn])
    child.eval()
    x = torch.randint(20, (6, 5))
    torch.testing.assert_close(child(x)[:3], child(x[:3]))  # moving statistics: no batch dependence
    with pytest.raises(ValueError, match="4 nodes, the path 3"):
        child.set_path(EnasRnnCell(("tanh",) * 3, (0, 1)))


def test_the_shared_childs_batchnorm_moves_by_the_uncorrected_variance_as_ptb_ops_does() -> None:
    """ptb_ops.batch_norm in training: x normalised by tf.nn.moments's mean and variance (divided
    by n, not n - 1), scale * (x - mean) / sqrt(1 + variance) + offset; assign_moving_average moves
    both statistics by 1 - 0.999 towards those same moments. Written out here in float64."""
    from raynas.supernet.enas_rnn import code_batch_norm

    torch.manual_seed(0)
    bn = code_batch_norm(3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    moving_mean, moving_var = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    for _ in range(3):
        x = torch.randn(5, 3) * 3 + 1
        xd = x.double()
        mean = xd.sum(0) / 5
        var = ((xd - mean) ** 2).sum(0) / 5  # tf.nn.moments: no Bessel correction
        expected = bn.weight.double() * (xd - mean) / torch.sqrt(1.0 + var) + bn.bias.double()
        torch.testing.assert_close(bn(x).double(), expected.detach(), rtol=1e-5, atol=1e-5)
        moving_mean -= (1 - 0.999) * (moving_mean - mean)
        moving_var -= (1 - 0.999) * (moving_var - var)
        torch.testing.assert_close(bn.running_mean.double(), moving_mean, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(bn.running_var.double(), moving_var, rtol=1e-6, atol=1e-7)
    # Gradients: those of torch's own batch normalisation of the same batch.
    x = torch.randn(5, 3, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    upstream = torch.randn(5, 3)
    (bn(x) * upstream).sum().backward()
    reference = F.batch_norm(x2, None, None, bn.weight, bn.bias, training=True, eps=1.0)
    grads = torch.autograd.grad((reference * upstream).sum(), [x2, bn.weight, bn.bias])
    torch.testing.assert_close(x.grad, grads[0])
    torch.testing.assert_close(bn.weight.grad, grads[1])
    torch.testing.assert_close(bn.bias.grad, grads[2])
    bn.eval()  # is_training=False: the moving statistics
    x = torch.randn(4, 3)
    expected = bn.weight * (x - bn.running_mean) / torch.sqrt(1.0 + bn.running_var) + bn.bias
    torch.testing.assert_close(bn(x), expected)
    # Recalibrated (momentum None, as raynas's recalibration sets it): the batches' plain mean.
    bn.train().reset_running_stats()
    bn.momentum = None
    batches = [torch.randn(5, 3), torch.randn(5, 3)]
    for x in batches:
        bn(x)
    torch.testing.assert_close(bn.running_var, sum(x.var(0, unbiased=False) for x in batches) / 2)


def ptb_enas_controller(controller: torch.nn.Module, arc: list[int], *, tanh_constant: float,
                        temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """ptb_enas_controller.py's _build_sampler on the given arc (its sample_log_probs summed, and
    its sample_entropy: log_prob * exp(-log_prob) of every action, summed),
    written out from that file with the controller's weights; its stack_lstm always starts from
    the zero prev_c, prev_h it never reassigns."""
    lstm = controller.lstm[0]
    w_soft, w_emb = controller.heads[0].weight.T, controller.embeddings[0].weight
    attn_w_1, attn_w_2 = controller.attn_1.weight.T, controller.attn_2.weight.T
    attn_v, g_emb = controller.attn_v.weight.T, controller.start
    all_h, all_h_w, log_probs = [], [], []
    inputs, at = g_emb, 0
    for layer_id in range((len(arc) + 1) // 2):
        next_h, _ = lstm(inputs)
        all_h.append(next_h)
        all_h_w.append(next_h @ attn_w_1)
        if layer_id > 0:
            query = next_h @ attn_w_2
            query = query + torch.cat(all_h_w[:-1], 0)
            query = torch.tanh(query)
            logits = (query @ attn_v).reshape(1, layer_id)
            logits = logits / temperature
            logits = tanh_constant * torch.tanh(logits)
            diff = (layer_id - torch.arange(layer_id)).float() ** 2
            logits = logits - diff.reshape(1, layer_id) / 12.0
            skip_index = torch.tensor([arc[at]])
            at += 1
            log_probs.append(F.cross_entropy(logits, skip_index))
            inputs = torch.cat(all_h[:-1], 0)[skip_index]
            inputs = inputs / (0.1 + (layer_id - skip_index).float())
        else:
            inputs = g_emb
        next_h, _ = lstm(inputs)
        logits = next_h @ w_soft
        logits = logits / temperature
        logits = tanh_constant * torch.tanh(logits)
        func = torch.tensor([arc[at]])
        at += 1
        log_probs.append(F.cross_entropy(logits, func))
        inputs = w_emb[func]
    nll = torch.stack(log_probs)
    return -nll.sum(), (nll * torch.exp(-nll)).sum()


def test_the_controller_scores_an_arc_as_ptb_enas_controller_py() -> None:
    from raynas.strategies import STRATEGIES

    space = SPACES.create("enas_rnn", EnasRnnSpaceConfig(nodes=6))
    entry = STRATEGIES.entry("enas")
    config = entry.config(tanh_constant=2.5, temperature=5.0, op_tanh_reduce=1.0, controller_batch=2,
                          controller_steps=1, controller_epochs=1)
    enas = STRATEGIES.create("enas", config, space=space, seed=2)
    assert [s.kind for s in enas.plan[:5]] == ["rnn_anchor", "op", "rnn_anchor", "rnn_input", "op"]
    assert enas.controller.heads[0].bias is None
    archs = [enas.propose() for _ in range(3)]
    actions = torch.tensor([enas.encode_actions(a) for a in archs])
    assert actions.tolist() == [[int(v) for v in a.arc().split()] for a in archs]  # the code's arc order
    _, log_prob, entropy = enas.controller(actions)
    for i, arch in enumerate(archs):
        expected, sample_entropy = ptb_enas_controller(
            enas.controller, [int(v) for v in arch.arc().split()], tanh_constant=2.5, temperature=5.0
        )
        torch.testing.assert_close(log_prob[i], expected)
        torch.testing.assert_close(entropy[i], sample_entropy)


def test_the_search_jobs_rate_decays_as_get_train_ops_exponential_decay() -> None:
    """src/utils.py's get_train_ops without lr_cosine: exponential_decay(lr_init, max(step -
    lr_dec_start, 0), lr_dec_every, lr_dec_rate, staircase=True), floored at lr_dec_min; with
    ptb_search.sh's start 12, every 1 epoch, rate 0.95 and floor 0.0005 (all rates over 35 steps)."""
    from raynas.runs.jobs import load_job
    from raynas.train.schedules import search_schedule

    train = load_job(JOBS / "enas_ptb.yaml").train
    assert (train.schedule, train.decay_start, train.gamma) == ("exponential", 12, 0.95)
    assert (train.learning_rate, train.learning_rate_min) == pytest.approx((0.25 * 35, 0.0005 * 35))
    assert train.grad_clip == pytest.approx(10 / 35, rel=1e-3)
    assert train.weight_decay == pytest.approx(2 * 1e-7 / 35, rel=1e-3)
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=train.learning_rate)
    schedule = search_schedule(optimizer, train)
    steps_per_epoch, rates = 7, []
    for _ in range(train.epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()

    def code(step: int) -> float:
        decayed = 0.25 * 0.95 ** (max(step - 12 * steps_per_epoch, 0) // steps_per_epoch)
        return max(decayed, 0.0005) * 35

    assert rates == pytest.approx([code(e * steps_per_epoch) for e in range(train.epochs)])
    assert rates[12] == rates[0] and rates[13] == pytest.approx(rates[0] * 0.95)


def test_a_language_models_rate_decays_after_its_start_down_to_its_floor() -> None:
    """ptb_final.sh's get_train_ops: the rate times 0.9991 an epoch after epoch 14, at least 0.001
    (here 0.5 after epoch 1, at least 0.3, on a small model)."""
    from raynas.train.language_model import fit_language_model

    torch.manual_seed(0)
    space = SPACES.create("enas_rnn", EnasRnnSpaceConfig(nodes=3))
    model = space.build(space.sample(random.Random(0)), DatasetInfo("ptb", 1, 12, 35), channels=4)
    batches = [(torch.randint(12, (2, 5)), torch.randint(12, (2, 5)))]
    rates = [m["lr"] for m, _ in fit_language_model(
        model, batches, batches, batches, torch.device("cpu"), epochs=5, learning_rate=1.0,
        weight_decay=0.0, grad_clip=0.25, bptt=5, nonmono=0, lr_gamma=0.5, decay_start=1,
        min_learning_rate=0.3,
    )]
    assert rates == pytest.approx([1.0, 1.0, 0.5, 0.3, 0.3])


def test_the_shared_child_carries_its_state_through_an_epoch_and_scores_from_zeros(tmp_path: Path) -> None:
    """ptb_enas_child.py: the training graph starts every window from start_h and assigns it its
    last state (should_carry), so the shared child trains through an epoch's windows in order, the
    state going on from window to window whatever path each trains (reset only between epochs,
    main.py); every window is child_bptt_steps long (ptb_input_producer). A reward's graph
    (_build_valid_rl, should_carry=False) starts from start_h just reset: zeros."""
    from raynas.evaluators.supernet import SupernetEvaluator
    from raynas.runs.jobs import load_job

    folder = write_random_ptb(tmp_path / "penn", train_words=400, valid_words=200)
    config = load_job(JOBS / "enas_ptb.yaml", [
        f"data.path={folder}", "data.bptt=6", "data.batch_size=4", "space.channels=8", "space.nodes=3",
        "execution.backend=local", f"tracking.output_dir={tmp_path / 'runs'}",
    ])
    assert (config.data.config.windows, config.data.config.valid_start) == ("fixed", "random")
    evaluator = SupernetEvaluator(config.evaluator.config, search=config)
    child = evaluator.supernet
    calls: list[tuple[torch.Tensor | None, torch.Tensor, int]] = []
    run = child.run

    def recorded(
        tokens: torch.Tensor, hidden: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits, last = run(tokens, hidden)
        calls.append((hidden, last, tokens.shape[1]))
        return logits, last

    child.run = recorded  # type: ignore[method-assign]
    space = SPACES.create("enas_rnn", config.space.config)
    rng = random.Random(0)
    for epoch in range(2):
        calls.clear()
        evaluator.train_epoch([space.sample(rng) for _ in range(3)])
        # 400 words in 4 streams of 100 tokens (<eos> included): (100 - 1) // 6 = 16 windows of 6.
        assert [t for _, _, t in calls] == [6] * 16, epoch
        assert calls[0][0] is None  # each epoch from zeros
        for (hidden, _, _), (_, last, _) in zip(calls[1:], calls, strict=False):
            assert hidden is not None and not hidden.requires_grad
            torch.testing.assert_close(hidden, last.detach(), rtol=0, atol=0)
    calls.clear()
    evaluator.evaluate(space.sample(rng))
    assert [hidden for hidden, _, _ in calls] == [None]  # one minibatch (valid_batches: 1), from zeros


def test_a_candidates_fine_tuning_carries_its_state_as_the_supernets_training_does(tmp_path: Path) -> None:
    """A candidate fine-tuned from the shared weights (``evaluator.epochs``, raynas's, not ENAS's)
    trains on its windows as the shared child did, each from the state the last ended in (the
    first of each epoch from zeros), and is scored window by window from zeros."""
    from raynas.evaluators.supernet import SupernetEvaluator
    from raynas.runs.jobs import load_job

    folder = write_random_ptb(tmp_path / "penn", train_words=400, valid_words=200)
    config = load_job(JOBS / "enas_ptb.yaml", [
        f"data.path={folder}", "data.bptt=6", "data.batch_size=4", "space.channels=8", "space.nodes=3",
        "execution.backend=ray", f"tracking.output_dir={tmp_path / 'runs'}", "evaluator.epochs=2",
        "tune.enabled=true",  # (fine-tuned candidates are Tune trials; here the evaluator alone)
    ])
    evaluator = SupernetEvaluator(config.evaluator.config, search=config)
    child = evaluator.supernet
    calls: list[tuple[bool, torch.Tensor | None, torch.Tensor]] = []
    run = child.run

    def recorded(
        tokens: torch.Tensor, hidden: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits, last = run(tokens, hidden)
        calls.append((child.training, hidden, last))
        return logits, last

    child.run = recorded  # type: ignore[method-assign]
    arch = SPACES.create("enas_rnn", config.space.config).sample(random.Random(0))
    epochs = list(evaluator.finetune(arch))
    assert [m["epoch"] for m, _ in epochs] == [1.0, 2.0]
    training = [(hidden, last) for trains, hidden, last in calls if trains]
    assert len(training) == 2 * 16  # two epochs of 16 windows (as the test above counts them)
    for i, (hidden, _) in enumerate(training):
        if i % 16 == 0:
            assert hidden is None, i  # each epoch from zeros
        else:
            assert hidden is not None and not hidden.requires_grad, i
            torch.testing.assert_close(hidden, training[i - 1][1].detach(), rtol=0, atol=0)
    scoring = [hidden for trains, hidden, _ in calls if not trains]
    assert scoring and all(hidden is None for hidden in scoring)


def test_a_rewards_window_starts_anywhere_a_whole_window_fits_and_the_windows_go_on_from_there() -> None:
    """ptb_input_producer(randomize=True): i uniform in [0, batch_len - num_steps), the window
    tokens i to i + num_steps of every stream; raynas's later windows go on in order from there."""
    from raynas.data.ptb import StreamWindows

    generator = torch.Generator().manual_seed(0)
    windows = StreamWindows(50, 10, generator, variable=False, random_start=True)
    starts = []
    for _ in range(1500):
        passes = list(windows)
        starts.append(passes[0][0][0])
        steps = [start for (start, _), in passes]
        assert steps == list(range(starts[-1], 48, 10)) and {size for (_, size), in passes} == {10}
    assert set(starts) == set(range(40))
    assert next(iter(StreamWindows(50, 10, generator, variable=False))) == [(0, 10)]  # (off: the first)
    # The generator decides: a candidate's stream, reseeded, gives the same window again.
    again = [list(StreamWindows(50, 10, torch.Generator().manual_seed(s), variable=False, random_start=True))
             for s in (1, 1, 2)]
    assert again[0] == again[1] and again[0] != again[2]


def test_the_retraining_trains_on_whole_windows_of_35_as_ptb_final_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ptb_final.sh's training reads ptb_input_producer's windows: every one child_bptt_steps long,
    the tokens after the last whole one not read; rnn/train.py's varying lengths are not ENAS's.
    Seen through a retraining of the job (shrunk), window by window."""
    from raynas.runs.retrain import run_retrain
    from raynas.spaces.enas_rnn import EnasRnnLanguageModel
    from tests.conftest import mlflow_store

    folder = write_random_ptb(tmp_path / "penn", train_words=400, valid_words=100)
    config = load_retrain_job(JOBS / "retrain_enas_ptb.yaml", [
        f"data.path={folder}", "data.bptt=6", "data.batch_size=4", "retrain.epochs=2", "retrain.channels=8",
        "retrain.valid_streams=2", "execution.backend=local",
        f"tracking.tracking_uri={mlflow_store(tmp_path)}", f"tracking.output_dir={tmp_path / 'runs'}",
    ])
    assert config.data.config.windows == "fixed"
    lengths: list[int] = []
    run_dropped = EnasRnnLanguageModel.run_dropped

    def recorded(self: EnasRnnLanguageModel, tokens: torch.Tensor, hidden: torch.Tensor | None = None) -> Any:
        if self.training and torch.is_grad_enabled():  # (not the network's check as it is built)
            lengths.append(tokens.shape[1])
        return run_dropped(self, tokens, hidden)

    monkeypatch.setattr(EnasRnnLanguageModel, "run_dropped", recorded)
    run_retrain(config, echo=lambda _: None, fresh=True)
    assert lengths == [6] * 16 * 2  # (100 - 1) // 6 windows of the 4 streams' 100 tokens, two epochs


def test_the_language_models_l2_term_is_inside_its_clipped_gradient() -> None:
    """get_train_ops (ptb_final.sh, --child_grad_bound=0.25 global): the gradient of loss + l2_reg *
    sum(w ** 2) over every variable, clipped by the global norm, then SGD. Written out in float64
    against one window of the retraining's epoch with decay_in_loss (wd = 2 * l2_reg); a job
    whose steps are not SGD's, or a gradient strategy's search, is refused the setting."""
    from raynas.runs.jobs import parse_job
    from raynas.train.language_model import train_language_model_epoch
    from tests.conftest import tiny_job

    torch.manual_seed(0)
    space = SPACES.create("enas_rnn", EnasRnnSpaceConfig(channels=6, nodes=3, dropoute=0.0, dropoutx=0.0,
                                                          dropouth=0.0))
    net = space.build(EnasRnnCell(("tanh", "relu", "sigmoid"), (0, 1)), DatasetInfo("ptb", 1, 20, 5))
    x, y = torch.randint(20, (3, 5)), torch.randint(20, (3, 5))
    lr, wd, clip = 2.0, 0.05, 0.1
    before = {name: p.detach().clone().double() for name, p in net.named_parameters()}
    net.train()
    logits, outputs, _ = net.run_dropped(x, None)
    loss = F.cross_entropy(logits, y) + 0.5 * (outputs[1:] - outputs[:-1]).pow(2).mean()
    named = list(net.named_parameters())
    grads = torch.autograd.grad(loss, [p for _, p in named])
    total = {name: g.double() + wd * before[name] for (name, _), g in zip(named, grads, strict=True)}
    norm = torch.sqrt(sum((g ** 2).sum() for g in total.values()))
    coef = min(1.0, clip / (float(norm) + 1e-6))
    assert coef < 1
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, weight_decay=0.0)
    train_language_model_epoch(net, optimizer, [(x, y)], torch.device("cpu"), bptt=5, grad_clip=clip,
                               tar=0.5, decay_in_loss=wd)
    for name, p in net.named_parameters():
        torch.testing.assert_close(p.detach().double(), before[name] - lr * coef * total[name],
                                   rtol=1e-5, atol=1e-7, msg=name)

    with pytest.raises(ConfigError, match=r"retrain.decay_in_loss.*needs retrain.optimizer: sgd"):
        load_retrain_job(JOBS / "retrain_enas_ptb.yaml", ["retrain.optimizer=adamw"])
    with pytest.raises(ConfigError, match=r"'train.decay_in_loss' is for the supernet of a sampling search"):
        parse_job({**tiny_job(Path("/tmp")), "train": {"decay_in_loss": True}})
