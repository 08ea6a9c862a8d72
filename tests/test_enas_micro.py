"""ENAS's own cell space (``enas_micro``): the arc string, the evaluation network's size against a
count of the variables ``melodyguan/enas``'s ``src/cifar10/micro_child.py`` creates, the shared
child's weights per (node, branch, input), the controller's order and op biases as
``micro_controller.py``'s, and the search's warm restarts as ``src/utils.py``'s ``get_train_ops``."""

from __future__ import annotations

import math
import random

import pytest
import torch

from raynas.errors import ArchitectureError, ConfigError
from raynas.ops.enas import ENAS_OPS
from raynas.profile import count_params
from raynas.spaces import SPACES
from raynas.spaces.enas_micro import EnasMicroCells, EnasMicroSpaceConfig, reduction_layers
from raynas.strategies import STRATEGIES
from raynas.supernet import build_supernet
from raynas.types import DatasetInfo

# scripts/cifar10_micro_final.sh's fixed_arc: the normal cell's 20 integers, then the reduction cell's.
FINAL_ARC = "0 2 0 0 0 4 0 1 0 4 1 1 1 0 0 1 0 2 1 1 1 0 1 0 0 3 0 2 1 1 3 1 1 0 0 4 0 3 1 1"
CIFAR10 = DatasetInfo("cifar10", 3, 10, 32)


def code_variables(arc: str, *, filters: int, layers: int, nodes: int, classes: int) -> int:
    """The trainable variables ``MicroChild._model`` creates for a fixed arc, counted shape by shape
    as its ``create_weight`` and ``batch_norm`` (offset and scale) calls make them, auxiliary head
    excluded (``_build_train`` counts ``tf_variables`` without ``aux_head``)."""
    values = [int(v) for v in arc.split()]
    normal, reduce = values[: 4 * nodes], values[4 * nodes :]

    def bn(c: int) -> int:
        return 2 * c

    def factorized(c_in: int, c_out: int) -> int:  # _factorized_reduction at stride 2
        return 2 * c_in * (c_out // 2) + bn(c_out)

    total = 3 * 3 * 3 * 3 * filters + bn(3 * filters)  # stem_conv
    states = [(3 * filters, 32), (3 * filters, 32)]  # (channels, size) of the two layers before
    out = filters
    pool = [layers // 3, 2 * (layers // 3) + 1]
    for layer_id in range(layers + 2):
        stride = 2 if layer_id in pool else 1
        out *= stride
        arc = reduce if stride == 2 else normal
        (c0, h0), (c1, h1) = states
        if h0 != h1:  # _maybe_calibrate_size: pool_x
            total += factorized(c0, out)
        elif c0 != out:
            total += c0 * out + bn(out)
        if c1 != out:  # pool_y
            total += c1 * out + bn(out)
        total += out * out + bn(out)  # layer_base
        used = [0] * (nodes + 2)
        for cell in range(nodes):
            for index, op in ((arc[4 * cell], arc[4 * cell + 1]), (arc[4 * cell + 2], arc[4 * cell + 3])):
                used[index] += 1
                if op in (0, 1):  # _fixed_conv: two separable convs with BatchNorm
                    k = (3, 5)[op]
                    total += 2 * (k * k * out + out * out + bn(out))
                elif op == 4 and stride == 2 and index < 2:  # the identity, reduced
                    total += factorized(out, out)
        unused = [i for i in range(nodes + 2) if used[i] == 0]
        if stride == 2:  # _fixed_combine: unused inputs at the input size
            total += sum(factorized(out, out) for i in unused if i < 2)
        states = [states[1], (out * len(unused), h1 // stride)]
    return total + states[1][0] * classes  # fc, no bias


def test_the_authors_arc_reads_and_writes_as_their_script_gives_it() -> None:
    arch = SPACES.create("enas_micro").parse(FINAL_ARC)
    assert arch.arc() == FINAL_ARC
    # Decoded by hand from the string (index, op per branch; op 0-4 as ENAS_OPS): node 2 takes
    # avg_pool on state 0 and sep_conv_3x3 on state 0, ...
    assert arch.normal[:4] == (
        ("avg_pool_3x3", 0), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_5x5", 0)
    )
    assert arch.normal_concat == (2, 3, 4, 5, 6)  # inputs 0 and 1 are both taken
    assert arch.reduce_concat == (2, 4, 5, 6)  # state 3 feeds node 5
    assert arch == SPACES.create("enas_micro").parse("ENAS")
    assert EnasMicroCells.from_json(arch.to_json()) == arch


def test_the_authors_network_has_the_size_their_code_gives_it() -> None:
    """At the final script's 36 filters and 15 layers on CIFAR-10: the parameters of the network
    built equal the code's variables counted shape by shape, 3,894,372 (the paper's Table 2 says
    4.6M, which the released arc at the released settings does not build: with the auxiliary
    head, which the code leaves out of its count, it is 4,389,220)."""
    space = SPACES.create("enas_micro")
    arch = space.parse("ENAS")
    expected = code_variables(FINAL_ARC, filters=36, layers=15, nodes=5, classes=10)
    assert expected == 3_894_372
    assert count_params(space.build(arch, CIFAR10)) == expected
    network = space.build(arch, CIFAR10, auxiliary=True)
    # aux_head on the 144 x 5 channels of layer 12 (after the second reduction): 1x1 conv to 128
    # with BatchNorm, 2x2 conv to 768 with BatchNorm, fc 768 x 10 without bias.
    head = 720 * 128 + 2 * 128 + 2 * 2 * 128 * 768 + 2 * 768 + 768 * 10
    assert sum(p.numel() for p in network.parameters()) == expected + head == 4_389_220


@pytest.mark.parametrize("seed", range(4))
def test_random_cells_build_the_size_the_code_counts(seed: int) -> None:
    space = SPACES.create("enas_micro")
    arch = space.sample(random.Random(seed))
    for filters, layers in ((20, 6), (36, 15)):
        expected = code_variables(arch.arc(), filters=filters, layers=layers, nodes=5, classes=10)
        assert count_params(space.build(arch, CIFAR10, channels=filters, layers=layers)) == expected


def test_a_node_may_take_one_state_twice_and_bad_arcs_say_why() -> None:
    space = SPACES.create("enas_micro", EnasMicroSpaceConfig(nodes=2))
    twice = space.parse("1 0 1 4 2 3 0 1 0 0 0 2 2 4 2 1")
    assert twice.normal[:2] == (("sep_conv_3x3", 1), ("skip_connect", 1))
    assert space.decode(space.encode(twice)) == twice
    assert twice.normal_concat == (3,)  # node 3 takes states 2 and 0
    with pytest.raises(ArchitectureError, match="cannot take input 3"):
        space.parse("0 0 1 0 3 0 0 0 0 0 1 0 2 0 0 0")
    with pytest.raises(ArchitectureError, match=r"op 7 is not 0\.\.4"):
        space.parse("0 7 1 0 2 0 0 0 0 0 1 0 2 0 0 0")
    with pytest.raises(ArchitectureError, match="a multiple of 8 integers"):
        space.parse("0 0 1")


def test_reduction_layers_are_the_codes_pool_layers() -> None:
    assert reduction_layers(6) == (2, 5)  # the search child: eight layers
    assert reduction_layers(15) == (5, 11)  # the final network: seventeen


def test_the_shared_child_has_weights_per_node_branch_and_input() -> None:
    """A path trains only its own weights: each branch's separable convolution on the state it
    reads (micro_child.py's w_depth, w_point, offset, scale indexed by prev_cell), and every
    layer's calibrations, final_conv and the classifier; pooling and the identity have none."""
    torch.manual_seed(0)
    space = SPACES.create("enas_micro", EnasMicroSpaceConfig(channels=4, layers=3, nodes=2))
    child = build_supernet(space, DatasetInfo("cifar10", 3, 10, 16))
    assert child.arch_parameters() == []
    # node 2: sep_conv_3x3 and sep_conv_5x5 on state 0; node 3: avg_pool on 2, identity on 0
    path = EnasMicroCells.parse("0 0 0 1 2 2 0 4 " * 2)
    child.set_path(path)
    child.train()
    logits, aux = child(torch.randn(4, 3, 16, 16))
    (logits.logsumexp(1).sum() + aux.logsumexp(1).sum()).backward()
    trained = {name.split(".convs.")[1].rsplit(".", 3)[0] for name, p in child.named_parameters()
               if ".convs." in name and p.grad is not None}
    # node.branch.input.op: node 0's first branch reads state 0 with sep_conv_3x3 (0), its second
    # state 0 with sep_conv_5x5 (1)
    assert trained == {"0.0.0.0", "0.1.0.1"}
    others = [p for name, p in child.named_parameters() if ".convs." not in name]
    assert all(p.grad is not None for p in others)
    unused = path.normal_concat
    assert unused == (1, 3)  # final_conv's rows 1 and 3 carry gradient, the others none
    grad = child.layers[0].final_conv.grad
    assert [bool(grad[i].abs().sum() > 0) for i in range(4)] == [False, True, False, True]


def test_the_shared_child_normalises_by_the_batch_in_evaluation_too() -> None:
    """The code builds the child with is_training=True for the controller's rewards: a candidate
    scored on a batch sees that batch's statistics, so one image's logits depend on its batch."""
    torch.manual_seed(0)
    space = SPACES.create("enas_micro", EnasMicroSpaceConfig(channels=4, layers=3, nodes=2, dropout=0.0))
    child = build_supernet(space, DatasetInfo("cifar10", 3, 10, 16))
    child.set_path(space.sample(random.Random(0)))
    child.eval()
    x = torch.randn(6, 3, 16, 16)
    assert not torch.allclose(child(x)[:3], child(x[:3]))
    assert not any(b is not None for _, b in child.named_buffers())


@pytest.mark.parametrize("name", ["enas_micro", "enas_macro"])
def test_every_batchnorm_of_both_children_is_image_ops_batch_norm(name: str) -> None:
    """src/cifar10/image_ops.py's batch_norm (decay 0.9, epsilon 1e-3) is the only BatchNorm of
    micro_child.py and general_child.py, shared and fixed alike: torch's momentum 0.1, eps 1e-3
    (not torch's 1e-5). One of them normalised by hand: (x - mean) / sqrt(var + 1e-3)."""
    torch.manual_seed(0)
    config = {"channels": 4, "layers": 3} | ({"nodes": 2} if name == "enas_micro" else {})
    space = SPACES.create(name, SPACES.entry(name).config(**config))
    child = build_supernet(space, CIFAR10)
    arch = space.sample(random.Random(0))
    head = {"auxiliary": True} if name == "enas_micro" else {}  # (the macro network has none)
    network = space.build(arch, CIFAR10, channels=4, layers=3, **head)
    norms = [m for net in (child, network) for m in net.modules()
             if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert len(norms) > 10
    assert all(m.eps == 1e-3 and m.momentum == pytest.approx(0.1) for m in norms)
    stem = network.stem[1].train()
    x = torch.randn(3, stem.num_features, 5, 5) * 0.01  # small variances, where epsilon shows
    mean, var = x.mean((0, 2, 3), keepdim=True), x.var((0, 2, 3), unbiased=False, keepdim=True)
    torch.testing.assert_close(stem(x), (x - mean) / torch.sqrt(var + 1e-3))


def test_the_l2_term_decays_every_weight_inside_the_clip_as_get_train_ops() -> None:
    """src/utils.py's get_train_ops: loss += l2_reg * sum over every variable of sum(w ** 2); the
    gradients of that loss, clipped to grad_bound by their global norm, step every variable:
    weights off the sampled path move by the L2 term's gradient alone. Written out here in
    float64 against one step of train_epoch with decay_in_loss (wd = 2 * l2_reg)."""
    from raynas.train.loop import train_epoch

    torch.manual_seed(0)
    space = SPACES.create("enas_micro", EnasMicroSpaceConfig(
        channels=4, layers=1, nodes=2, auxiliary_weight=0.0, dropout=0.0))
    child = build_supernet(space, CIFAR10)
    path = space.sample(random.Random(1))
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    lr, wd, clip = 0.5, 0.01, 0.05
    before = {name: p.detach().clone().double() for name, p in child.named_parameters()}
    child.set_path(path)
    child.train()
    loss = torch.nn.functional.cross_entropy(child(x), y)
    named = list(child.named_parameters())
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    total = {name: (torch.zeros_like(before[name]) if g is None else g.double()) + wd * before[name]
             for (name, _), g in zip(named, grads, strict=True)}
    norm = torch.sqrt(sum((g ** 2).sum() for g in total.values()))
    coef = min(1.0, clip / (float(norm) + 1e-6))  # tf.clip_by_global_norm (torch adds its 1e-6)
    assert coef < 1  # the clip acts, with the L2 term inside it
    off_path = [name for (name, _), g in zip(named, grads, strict=True) if g is None]
    assert off_path  # the other branches' and inputs' weights

    optimizer = torch.optim.SGD(child.parameters(), lr=lr, momentum=0.0, weight_decay=0.0)
    train_epoch(child, optimizer, [(x, y)], torch.device("cpu"), grad_clip=clip,
                before_step=lambda _: child.set_path(path), decay_in_loss=wd)
    for name, p in child.named_parameters():
        expected = before[name] - lr * coef * total[name]
        torch.testing.assert_close(p.detach().double(), expected, rtol=1e-5, atol=1e-7, msg=name)
    name = off_path[0]
    moved = before[name] - dict(child.named_parameters())[name].detach().double()
    decay = lr * coef * wd * before[name]
    assert decay.abs().max() > 1e-6  # (float32 differences are good to about 3e-8 here)
    torch.testing.assert_close(moved, decay, rtol=0, atol=5e-8)


def test_strided_ops_pad_as_tensorflows_same() -> None:
    """micro_child.py's strided ops (on a reduction cell's inputs) are separable_conv2d and
    average_/max_pooling2d with padding "SAME": out = ceil(in / stride) and the padding that needs,
    max((out - 1) * stride + k - in, 0), split with the odd pixel after (TensorFlow's documented
    rule). By hand: 8 pixels, k 3 -> (0, 1), k 5 -> (1, 2); 7 pixels, k 3 -> (1, 1), k 5 -> (2, 2).
    Pools written out window by window: the padding is never the maximum and not in the average."""
    import copy

    from raynas.ops.enas import SamePool, SameSepConv

    torch.manual_seed(0)
    pads = {(8, 3): (0, 1), (8, 5): (1, 2), (7, 3): (1, 1), (7, 5): (2, 2)}
    x = torch.randn(2, 4, 7, 8)  # 7 rows, 8 columns
    for k in (3, 5):
        conv = SameSepConv(4, k, 2).eval()
        reference = copy.deepcopy(conv)  # the same weights, fed the input padded by hand
        top, bottom = pads[(7, k)]
        left, right = pads[(8, k)]
        padded = torch.nn.functional.pad(x, (left, right, top, bottom))
        expected = torch.nn.Sequential.forward(reference, padded)
        assert conv(x).shape == (2, 4, 4, 4)
        torch.testing.assert_close(conv(x), expected)
    (top, bottom), (left, right) = pads[(7, 3)], pads[(8, 3)]
    for kind in ("avg", "max"):
        out = SamePool(kind, 3, 2)(x)
        assert out.shape == (2, 4, 4, 4)
        for i in range(4):
            for j in range(4):
                rows = range(max(0, 2 * i - top), min(7, 2 * i - top + 3))
                cols = range(max(0, 2 * j - left), min(8, 2 * j - left + 3))
                window = x[:, :, rows.start:rows.stop, cols.start:cols.stop]
                want = window.amax((2, 3)) if kind == "max" else window.mean((2, 3))
                torch.testing.assert_close(out[:, :, i, j], want)


def test_gradient_strategies_are_refused_on_the_shared_child() -> None:
    from raynas.runs.jobs import parse_job

    with pytest.raises(ConfigError, match="has no architecture weights for gradient strategy 'darts'"):
        parse_job({"name": "x", "space": {"name": "enas_micro"}, "strategy": {"name": "darts"},
                   "data": {"name": "digits"}})


def test_the_controller_samples_in_the_codes_order_with_its_op_biases() -> None:
    """micro_controller.py's _build_sampler: two anchor steps per cell, then per node index_1,
    index_2, op_1, op_2 and one step for the node's anchor; b_soft starts at 10 on both separable
    convolutions, and the normal cell's op logits get b_soft_no_learn after the squashing. With
    every other weight zero the LSTM's output is zero, so a normal cell's op distribution is
    softmax(c tanh(b_soft) + b_soft_no_learn), c = 1.1 / 2.5, and a reduction cell's lacks the
    last term; inputs are uniform."""
    space = SPACES.create("enas_micro", EnasMicroSpaceConfig(nodes=2))
    entry = STRATEGIES.entry("enas")
    enas = STRATEGIES.create("enas", entry.config(), space=space, seed=0)
    kinds = [s.kind for s in enas.plan]
    node = ["input", "input", "op", "op", "node"]
    assert kinds == (["anchors", *node, *node]) * 2
    controller = enas.controller
    with torch.no_grad():
        for name, p in controller.named_parameters():
            if not name.startswith("heads.") or name.endswith("weight"):
                p.zero_()
    head = next(h for h in controller.heads if h.out_features == len(ENAS_OPS))
    assert head.bias.tolist() == [10.0, 10.0, 0.0, 0.0, 0.0]
    arch = enas.space.decode([0] * len(enas.decisions))
    actions = torch.tensor([enas.encode_actions(arch)])  # every input 0, every op sep_conv_3x3
    _, log_prob, _ = controller(actions)
    c = 1.1 / 2.5
    normal = [c * math.tanh(10) + 0.25] * 2 + [c * math.tanh(0) - 0.25] * 3
    reduce = [c * math.tanh(10)] * 2 + [0.0] * 3

    def log_p(logits: list[float]) -> float:
        return logits[0] - math.log(sum(math.exp(v) for v in logits))

    inputs = 2 * (2 * math.log(1 / 2) + 2 * math.log(1 / 3))  # nodes 2 and 3 of both cells
    expected = inputs + 4 * log_p(normal) + 4 * log_p(reduce)
    assert log_prob.item() == pytest.approx(expected, rel=1e-6)


def test_warm_restarts_follow_the_codes_rate() -> None:
    """get_train_ops with lr_cosine: the epoch's rate lr_min + (lr_max - lr_min)(1 + cos(pi T_cur
    / T_i)) / 2, T_i = 10, 20, 40, ... and T_cur counted from the last restart."""
    from raynas.config import TrainConfig
    from raynas.train.schedules import search_schedule

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    train = TrainConfig(epochs=150, learning_rate=0.05, learning_rate_min=0.0005, schedule="restarts")
    schedule = search_schedule(optimizer, train)
    rates = []
    for _ in range(150):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()

    def code(epoch: int) -> float:
        last, t_i = 0, 10
        while epoch - last >= t_i:
            last, t_i = last + t_i, t_i * 2
        return 0.0005 + 0.5 * (0.05 - 0.0005) * (1 + math.cos((epoch - last) / t_i * math.pi))

    assert rates == pytest.approx([code(e) for e in range(150)])
    assert rates[10] == rates[30] == rates[70] == pytest.approx(0.05)  # the restarts
    assert rates[9] < 0.002 and rates[149] < 0.0006
