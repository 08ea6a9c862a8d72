"""ENAS's macro space (``enas_macro``): the arc string, the evaluation network's size against a count
of the variables ``melodyguan/enas``'s ``src/cifar10/general_child.py`` creates, the shared child's
branches and skips, and the controller's program, skip penalty and loss as
``general_controller.py``'s, recomputed here step by step from that file."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from raynas.errors import ArchitectureError, ConfigError
from raynas.ops.enas import ENAS_MACRO_OPS
from raynas.profile import count_params
from raynas.spaces import SPACES
from raynas.spaces.enas_macro import EnasMacroLayers, EnasMacroSpaceConfig, pool_layers
from raynas.strategies import STRATEGIES
from raynas.supernet import build_supernet
from raynas.types import DatasetInfo

PAPERS = Path(__file__).parents[2] / "shared" / "reference" / "papers.json"
CIFAR10 = DatasetInfo("cifar10", 3, 10, 32)


def code_variables(arc: str, *, filters: int, classes: int) -> int:
    """The trainable variables ``GeneralChild._model`` creates for a fixed arc with whole
    channels, counted shape by shape as its ``create_weight`` and ``batch_norm`` (offset and scale)
    calls make them."""
    values = [int(v) for v in arc.split()]
    layers = int(((8 * len(values) + 1) ** 0.5 - 1) / 2)

    def bn(c: int) -> int:
        return 2 * c

    total = 3 * 3 * 3 * filters + bn(filters)  # stem_conv
    out, count, at = filters, 1, 0  # count: the layers list, the stem's output first
    pools = [layers // 3 - 1, 2 * (layers // 3) - 1]
    for layer_id in range(layers):
        op, skip = values[at], values[at + 1 : at + 1 + layer_id]
        at += 1 + layer_id
        k = [3, 3, 5, 5][op]  # _fixed_layer: conv_1x1, then conv_{k}x{k}, each with BatchNorm
        total += out * out + bn(out) + k * k * out * out + bn(out)
        if layer_id > 0:  # skip: a 1x1 conv over (sum(skip) + 1) * out_filters channels
            total += (sum(skip) + 1) * out * out + bn(out)
        count += 1
        if layer_id in pools:
            out *= 2  # every layer so far: _factorized_reduction to out_filters
            total += count * (2 * (out // 2) * (out // 2) + bn(out))
    return total + out * classes  # fc, no bias


def final_arc() -> str:
    return SPACES.create("enas_macro").parse("ENAS_macro").arc()


def test_the_authors_arc_reads_as_their_script_writes_it_and_as_the_reference_decodes_it() -> None:
    arch = SPACES.create("enas_macro").parse("ENAS_macro")
    assert arch.layers == 24
    # scripts/cifar10_macro_final.sh, its first lines: "0", "3 0", "0 1 0", "2 0 0 1".
    assert arch.arc().startswith("0 3 0 0 1 0 2 0 0 1 ")
    assert EnasMacroLayers.parse(arch.arc()) == arch
    decoded = json.loads(PAPERS.read_text())["enas"]["macro_space"]["final_arc_decoded"]
    names = {"conv3x3": "conv_3x3", "sep_conv3x3": "sep_conv_3x3", "conv5x5": "conv_5x5",
             "sep_conv5x5": "sep_conv_5x5"}
    assert [names[d["op_id_and_name"]] for d in decoded] == list(arch.ops)
    assert [tuple(d["skip_from_layers"]) for d in decoded] == list(arch.skips)
    with pytest.raises(ArchitectureError, match="L \\(L \\+ 1\\) / 2 integers"):
        EnasMacroLayers.parse("0 1")
    with pytest.raises(ArchitectureError, match="skip bits"):
        EnasMacroLayers.parse("0 1 2")
    with pytest.raises(ArchitectureError, match=r"must be distinct states among 0\.\.1"):
        EnasMacroLayers(("conv_3x3",) * 3, ((), (), (2,)))


def test_the_final_network_has_the_parameters_the_codes_variables_count() -> None:
    """At the final script's settings (96 filters, 24 layers): 42,559,392 trainable variables,
    equal to general_child.py's create_weight and batch_norm calls counted. 21.3M is quoted for
    the paper's macro network (papers.json holds it unverified); no count of the released arc at
    the released settings reaches it (nor at 64 or 72 filters)."""
    space = SPACES.create("enas_macro")
    net = space.build(space.parse("ENAS_macro"), CIFAR10)
    assert count_params(net) == code_variables(final_arc(), filters=96, classes=10) == 42_559_392
    rng = random.Random(0)
    small = SPACES.create("enas_macro", EnasMacroSpaceConfig(layers=7, branches=4))
    for _ in range(4):
        arch = small.sample(rng)
        for filters in (8, 12):
            assert count_params(small.build(arch, CIFAR10, channels=filters)) == code_variables(
                arch.arc(), filters=filters, classes=10
            )


def test_the_final_network_doubles_its_channels_at_half_the_resolution_twice_and_keeps_its_depth() -> None:
    space = SPACES.create("enas_macro")
    arch = space.parse("ENAS_macro")
    assert pool_layers(24) == (7, 15)
    net = space.build(arch, DatasetInfo("cifar10", 3, 10, 16), channels=4)
    sizes = []
    hook = [m.register_forward_hook(lambda _m, _i, o: sizes.append(tuple(o.shape[1:])))
            for m in net.skip_convs[6:10]]
    net(torch.randn(2, 3, 16, 16))
    for h in hook:
        h.remove()
    assert sizes == [(4, 16, 16), (4, 16, 16), (8, 8, 8), (8, 8, 8)]  # layer 8 is after the first pool
    with pytest.raises(ConfigError, match="has 24 layers, not 12"):
        space.build(arch, CIFAR10, layers=12)


def test_the_shared_child_runs_the_paths_branch_and_sums_its_skips_before_batchnorm() -> None:
    """_enas_layer: the path's branch of the layer (weights per layer and branch), then, where
    the layer takes skips, BatchNorm of the sum of the branch's output and the skipped states."""
    torch.manual_seed(0)
    space = SPACES.create("enas_macro", EnasMacroSpaceConfig(channels=4, layers=6, dropout=0.0))
    child = build_supernet(space, DatasetInfo("cifar10", 3, 10, 8))
    path = EnasMacroLayers(("sep_conv_5x5", "max_pool_3x3") + ("conv_3x3",) * 4, ((), (0,), (), (), (), ()))
    child.set_path(path)
    x = torch.randn(5, 3, 8, 8)
    child(x).sum().backward()
    trained = {n.split(".")[1] + "." + n.split(".")[2] for n, p in child.named_parameters()
               if n.startswith("branches.") and p.grad is not None}
    assert trained == {"0.3", "1.5", "2.0", "3.0", "4.0", "5.0"}
    child.eval()
    with torch.no_grad():  # layer 1 (before the first pool) by hand: BN(branch(state 1) + state 0)
        s0 = child.stem(x)
        s1 = child.branches[0][3](s0)
        by_hand = child.skip_bns[1](child.branches[1][5](s1) + s0)
        seen = []
        hook = child.skip_bns[1].register_forward_hook(lambda _m, _i, o: seen.append(o))
        child(x)
        hook.remove()
    torch.testing.assert_close(seen[0], by_hand)
    with pytest.raises(ValueError, match="has 6 layers"):
        child.set_path(SPACES.create("enas_macro", EnasMacroSpaceConfig(layers=4)).sample(random.Random(0)))


def general_controller(controller: torch.nn.Module, arc: list[int], *, tanh_constant: float,
                       skip_target: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """general_controller.py's _build_sampler with whole channels, on the given arc (its
    ``sample_log_prob``, ``sample_entropy`` and ``skip_penaltys`` for it), written out line by line
    from that file with the controller's weights: w_soft, w_emb, w_attn_1, w_attn_2, v_attn, g_emb
    and the LSTM."""
    lstm = controller.lstm[0]
    w_soft, w_emb = controller.heads[0].weight.T, controller.embeddings[0].weight
    w_attn_1, w_attn_2 = controller.attn_1.weight.T, controller.attn_2.weight.T
    v_attn = controller.attn_v.weight.T
    g_emb = controller.start
    targets = torch.tensor([1.0 - skip_target, skip_target])
    state, inputs = None, g_emb
    anchors, anchors_w_1, log_probs, penalties, entropys = [], [], [], [], []
    start, layer_id = 0, 0
    while start < len(arc):
        next_h, next_c = lstm(inputs, state)
        state = (next_h, next_c)
        logit = tanh_constant * torch.tanh(next_h @ w_soft)
        branch_id = torch.tensor([arc[start]])
        log_probs.append(F.cross_entropy(logit, branch_id))
        entropys.append(log_probs[-1] * torch.exp(-log_probs[-1]))
        inputs = w_emb[branch_id]
        next_h, next_c = lstm(inputs, state)
        state = (next_h, next_c)
        if layer_id > 0:
            query = torch.cat(anchors_w_1, 0)
            query = torch.tanh(query + next_h @ w_attn_2)
            query = query @ v_attn
            logit = torch.cat([-query, query], 1)
            logit = tanh_constant * torch.tanh(logit)
            skip = torch.tensor(arc[start + 1 : start + 1 + layer_id])
            skip_prob = torch.sigmoid(logit)
            penalties.append((skip_prob * torch.log(skip_prob / targets)).sum())
            per_skip = F.cross_entropy(logit, skip, reduction="none")
            log_probs.append(per_skip.sum())
            entropys.append((per_skip * torch.exp(-per_skip)).sum())
            skip = skip.float().reshape(1, layer_id)
            inputs = skip @ torch.cat(anchors, 0) / (1.0 + skip.sum())
        else:
            inputs = g_emb
        anchors.append(next_h)
        anchors_w_1.append(next_h @ w_attn_1)
        start += 1 + layer_id
        layer_id += 1
    return -torch.stack(log_probs).sum(), torch.stack(entropys).sum(), torch.stack(penalties).mean()


def test_the_controller_scores_an_arc_as_general_controller_py_and_adds_its_skip_penalty() -> None:
    space = SPACES.create("enas_macro", EnasMacroSpaceConfig(layers=5))
    entry = STRATEGIES.entry("enas")
    config = entry.config(tanh_constant=1.5, op_tanh_reduce=1.0, skip_target=0.4, skip_weight=0.8,
                          entropy_weight=0.0, controller_batch=2, controller_steps=1, controller_epochs=1)
    enas = STRATEGIES.create("enas", config, space=space, seed=3)
    kinds = [s.kind for s in enas.plan]
    assert kinds[:9] == ["op", "layer", "op", "layer", "skip", "op", "layer", "skip", "skip"]
    controller = enas.controller
    assert all(h.bias is None for h in controller.heads)  # the code's w_soft, no bias
    archs = [enas.propose() for _ in range(2)]
    assert archs[0] != archs[1]
    actions = torch.tensor([enas.encode_actions(a) for a in archs])
    assert actions.tolist() == [[int(v) for v in a.arc().split()] for a in archs]  # the code's arc order
    _, log_prob, entropy = controller(actions)
    penalty = controller.skip_penalty
    for i, arch in enumerate(archs):
        expected, sample_entropy, kl = general_controller(
            controller, [int(v) for v in arch.arc().split()], tanh_constant=1.5, skip_target=0.4
        )
        torch.testing.assert_close(log_prob[i], expected)
        torch.testing.assert_close(entropy[i], sample_entropy)
        torch.testing.assert_close(penalty[i], kl)
    # build_trainer: loss = -log p * (R - b) + skip_weight * penalty, averaged over the batch;
    # the baseline starts at 0 and moves towards each reward before it is used (no entropy bonus).
    from raynas.types import EvalResult

    rewards = (0.5, 0.25)
    results = [EvalResult(architecture=a, metrics={"valid_acc": r})
               for a, r in zip(archs, rewards, strict=True)]
    loss = enas.policy_loss(results)
    advantages, baseline = [], 0.0
    for r in rewards:
        baseline = 0.99 * baseline + 0.01 * r
        advantages.append(r - baseline)
    expected = (-log_prob * torch.tensor(advantages)).mean() + 0.8 * penalty.mean()
    torch.testing.assert_close(loss, expected)


def test_gradient_strategies_are_refused_on_the_macro_shared_child() -> None:
    from raynas.runs.jobs import parse_job

    with pytest.raises(ConfigError, match="has no architecture weights for gradient strategy 'darts'"):
        parse_job({"name": "x", "space": {"name": "enas_macro"}, "strategy": {"name": "darts"},
                   "data": {"name": "digits"}})


def test_every_macro_op_is_offered_in_the_codes_order() -> None:
    assert ENAS_MACRO_OPS[:4] == ("conv_3x3", "sep_conv_3x3", "conv_5x5", "sep_conv_5x5")
    four = SPACES.create("enas_macro", EnasMacroSpaceConfig(branches=4))
    assert four.decisions()[0].options == ENAS_MACRO_OPS[:4]
    assert [d.name for d in four.decisions()[:4]] == ["layer0.op", "layer1.op", "layer1.skip0", "layer2.op"]
