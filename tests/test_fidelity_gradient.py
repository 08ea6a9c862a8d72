"""The gradient strategies and their networks as their papers and official code do them (issue 15,
docs/fidelity.md): ADARTS's channel alignment, FBNet's schedule, recurrent DARTS as
rnn/train_search.py (streams, hidden state, TAR, clipping, the rate per window, evaluation)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from raynas.ops.attention import AttentionPartialMixedOp


def _fixed_attention(op: AttentionPartialMixedOp, bias: list[float]) -> torch.Tensor:
    """Make the op's attention ignore its input: sigmoid(bias) per channel."""
    last = op.attention.mlp[2]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor(bias))
    return torch.sigmoid(torch.tensor(bias))


def test_adarts_edges_add_aligned_channels() -> None:
    """Two edges into one node whose attentions choose different channels: with identity as the
    only candidate, each edge's output is its attention-weighted input channel for channel, so
    the node's sum is x * (s1 + s2) at every channel (the chosen channels concatenated first
    would put channel 3 of one edge onto channel 0 of the other)."""
    torch.manual_seed(0)
    edges = [
        AttentionPartialMixedOp(channels=4, stride=1, primitives=("skip_connect",), k=2) for _ in range(2)
    ]
    s1 = _fixed_attention(edges[0], [-2.0, -1.0, 2.0, 3.0])  # chooses channels 2 and 3
    s2 = _fixed_attention(edges[1], [3.0, 2.0, -1.0, -2.0])  # chooses channels 0 and 1
    x = torch.arange(2 * 4 * 2 * 2, dtype=torch.float32).reshape(2, 4, 2, 2)  # (B, C, H, W)
    w = torch.ones(1)
    assert edges[0].select(x)[1].tolist() == [2, 3] and edges[1].select(x)[1].tolist() == [0, 1]
    outs = [edge(x, w) for edge in edges]
    torch.testing.assert_close(outs[0], x * s1[None, :, None, None])
    torch.testing.assert_close(outs[1], x * s2[None, :, None, None])
    node = outs[0] + outs[1]
    torch.testing.assert_close(node, x * (s1 + s2)[None, :, None, None])
    # the fused form (edges leaving one state computed together) aligns them the same way
    fused = AttentionPartialMixedOp.forward_shared(x, edges, [w, w])
    for a, b in zip(fused, outs, strict=True):
        torch.testing.assert_close(a, b)


# -- FBNet: warm-up, then weights and theta alternating by epoch ---------------------------------


def test_fbnet_warms_up_then_alternates_by_epoch(tmp_path: Path) -> None:
    """The paper's schedule: ``arch_start_epoch`` epochs of weights only, then each epoch the
    weights on every training batch followed by theta on every validation batch; theta's Adam at
    0.01 with weight decay 5e-4; final architectures drawn from P_theta."""
    from raynas.config import TrainConfig
    from raynas.ops.fbnet import FBNET_BLOCKS
    from raynas.strategies.gradient.fbnet import Fbnet, FbnetConfig
    from raynas.supernet import build_supernet
    from raynas.train.loop import search_epoch
    from tests.test_fbnet import DIGITS, _table, small_space

    space = small_space()
    defaults = FbnetConfig(latency_table=str(_table(space, tmp_path)))
    assert defaults.arch_start_epoch == 10
    assert (defaults.arch_learning_rate, defaults.arch_weight_decay) == (1e-2, 5e-4)
    torch.manual_seed(0)
    net = build_supernet(space, DIGITS)
    config = FbnetConfig(latency_table=defaults.latency_table, arch_start_epoch=1)
    strategy = Fbnet(supernet=net, config=config, train=TrainConfig(epochs=3))
    group = strategy.a_optimizer.param_groups[0]
    assert (group["lr"], group["weight_decay"], group["betas"]) == (1e-2, 5e-4, (0.9, 0.999))
    calls: list[str] = []
    weight_step, arch_step = strategy.weight_step, strategy.arch_step
    strategy.weight_step = lambda b: calls.append("w") or weight_step(b)  # type: ignore[method-assign]
    strategy.arch_step = lambda b: calls.append("theta") or arch_step(b)  # type: ignore[method-assign]
    strategy.step = None  # type: ignore[assignment]  # never the DARTS step-by-step alternation
    train = [(torch.randn(2, 1, 8, 8), torch.randint(0, 10, (2,))) for _ in range(4)]  # 80%
    valid = [(torch.randn(2, 1, 8, 8), torch.randint(0, 10, (2,)))]  # 20%
    thetas = [net.theta.detach().clone()]
    for _ in range(3):
        calls.clear()
        search_epoch(strategy, train, valid, torch.device("cpu"))
        assert calls == ["w"] * 4 + ["theta"]
        thetas.append(net.theta.detach().clone())
    assert torch.equal(thetas[0], thetas[1])  # warm-up
    assert not torch.equal(thetas[1], thetas[2]) and not torch.equal(thetas[2], thetas[3])

    with torch.no_grad():  # P_theta: layer 0 almost surely k5_e6, the others uniform
        net.theta.zero_()
        net.theta[0, FBNET_BLOCKS.index("k5_e6")] = 50.0
    samples = strategy.sample_architectures(40, torch.Generator().manual_seed(0))
    assert all(a.blocks[0] == "k5_e6" for a in samples)
    assert len({a.blocks[1] for a in samples}) > 3  # sampled, not the argmax


# -- Recurrent DARTS: the unrolled step's gradient clipped ---------------------------------------


def test_recurrent_darts_clips_the_unrolled_gradient() -> None:
    """rnn/architect.py: w' = w - xi * (clip(grad_w L_train, grad_clip) + weight_decay * w); the
    validation loss of the second-order gradient is taken at that w'."""
    from raynas.config import TrainConfig
    from raynas.strategies.gradient.darts import Darts, DartsConfig
    from raynas.supernet.darts_rnn import DartsRnnSupernet

    torch.manual_seed(0)
    model = DartsRnnSupernet(ntoken=12, nhid=6, nodes=2, activations=("tanh", "relu"), dropout=0.0,
                             dropouth=0.0, dropoutx=0.0, dropouti=0.0, dropoute=0.0)
    train = TrainConfig(epochs=1, learning_rate=0.5, momentum=0.0, weight_decay=1e-3, grad_clip=0.01)
    strategy = Darts(supernet=model, config=DartsConfig(order=2), train=train)
    batch = (torch.randint(0, 12, (3, 5)), torch.randint(0, 12, (3, 5)))
    weights = strategy.weight_params
    before = [w.detach().clone() for w in weights]
    grads = torch.autograd.grad(strategy.loss(batch)[0], weights)
    norm = torch.cat([g.flatten() for g in grads]).norm()
    assert norm > 0.01  # so the clip acts
    expected = [w - 0.5 * (g * 0.01 / (norm + 1e-6) + 1e-3 * w) for w, g in zip(before, grads, strict=True)]

    seen: list[list[torch.Tensor]] = []
    loss = strategy.loss

    def spy(b):  # type: ignore[no-untyped-def]
        seen.append([w.detach().clone() for w in weights])
        return loss(b)

    strategy.loss = spy  # type: ignore[method-assign]
    strategy.arch_backward(batch, batch)
    for w, e in zip(seen[1], expected, strict=True):  # the second pass: L_val at w'
        torch.testing.assert_close(w, e)
    for w, b in zip(weights, before, strict=True):  # and the weights are put back
        torch.testing.assert_close(w.detach(), b)


# -- Recurrent DARTS: streams, hidden state carried, TAR ------------------------------------------


def _tiny_rnn_strategy(**config: object):  # type: ignore[no-untyped-def]
    from raynas.config import TrainConfig
    from raynas.strategies.gradient.darts import Darts, DartsConfig
    from raynas.supernet.darts_rnn import DartsRnnSupernet

    torch.manual_seed(0)
    model = DartsRnnSupernet(ntoken=12, nhid=6, nodes=2, activations=("tanh", "relu"), dropout=0.0,
                             dropouth=0.0, dropoutx=0.0, dropouti=0.0, dropoute=0.0)
    train = TrainConfig(epochs=2, grad_clip=0.25)
    return Darts(supernet=model, config=DartsConfig(**config), train=train)  # type: ignore[arg-type]


def test_recurrent_darts_carries_the_hidden_state_between_batches() -> None:
    """rnn/train_search.py: each batch of a stream starts from the (detached) hidden state the
    stream's previous batch ended in (the training text's for the weights, the validation
    text's for alpha), and every epoch starts from zeros."""
    strategy = _tiny_rnn_strategy()
    model = strategy.model
    calls: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]] = []
    run = model.run_outputs

    def spy(tokens, hidden=None):  # type: ignore[no-untyped-def]
        logits, outputs = run(tokens, hidden)
        calls.append((tokens, hidden, outputs[-1].detach()))
        return logits, outputs

    model.run_outputs = spy  # type: ignore[method-assign]
    text = torch.randint(0, 12, (3, 13))  # 3 streams
    valid = torch.randint(0, 12, (3, 13))
    batches = [(text[:, i : i + 4], text[:, i + 1 : i + 5]) for i in (0, 4)]
    checks = [(valid[:, i : i + 4], valid[:, i + 1 : i + 5]) for i in (0, 4)]
    strategy.step(batches[0], checks[0])  # first order: alpha on valid, then w on train
    (v0, hv0, end_v0), (t0, ht0, end_t0) = calls
    assert v0 is checks[0][0] and t0 is batches[0][0] and hv0 is None and ht0 is None
    strategy.step(batches[1], checks[1])
    (v1, hv1, _), (t1, ht1, _) = calls[2:]
    assert v1 is checks[1][0] and t1 is batches[1][0]
    torch.testing.assert_close(hv1, end_v0)  # alpha's stream goes on from where it was
    torch.testing.assert_close(ht1, end_t0)  # and the weights' from theirs
    assert not ht1.requires_grad  # type: ignore[union-attr]
    strategy.end_epoch()
    strategy.step(batches[0], checks[0])
    assert calls[4][1] is None and calls[5][1] is None  # a new epoch starts from zeros


def _grads_at_sgd_step(strategy, batch):  # type: ignore[no-untyped-def]
    """The weights' gradients when the weight step steps its optimiser; checks the reported loss
    is the cross-entropy."""
    from raynas.train.segmentation import mean_cross_entropy

    seen = []
    optimizer = strategy.w_optimizer
    original = optimizer.step

    def spy(*a, **k):  # type: ignore[no-untyped-def]
        seen.append([p.grad.clone() for p in strategy.weight_params])
        return original(*a, **k)

    optimizer.step = spy  # type: ignore[method-assign]
    with torch.no_grad():
        ce = float(mean_cross_entropy(strategy.model.run_outputs(batch[0])[0], batch[1]))
    result = strategy.weight_step(batch)
    assert float(result.loss_sum) / float(result.count) == pytest.approx(ce, rel=1e-5)
    return seen[0]


def test_recurrent_darts_weight_loss_adds_temporal_activation_regularisation() -> None:
    """The weights' gradient is that of CE + tar * mean((h_{t+1} - h_t)^2) over the cell's
    outputs (rnn/train_search.py's --beta); the reported loss is the cross-entropy."""
    from raynas.train.segmentation import mean_cross_entropy

    x, y = torch.randint(0, 12, (3, 5)), torch.randint(0, 12, (3, 5))
    grads = {}
    for tar in (0.0, 0.5):
        strategy = _tiny_rnn_strategy(tar=tar)
        logits, outputs = strategy.model.run_outputs(x)
        expected = mean_cross_entropy(logits, y) + tar * (outputs[1:] - outputs[:-1]).pow(2).mean()
        want = torch.autograd.grad(expected, strategy.weight_params)
        seen = _grads_at_sgd_step(strategy, (x, y))
        norm = torch.cat([g.flatten() for g in want]).norm()
        scale = min(1.0, 0.25 / (float(norm) + 1e-6))  # clip_grad_norm_ to 0.25
        for got, w in zip(seen, want, strict=True):
            torch.testing.assert_close(got, w * scale, rtol=1e-4, atol=1e-6)
        grads[tar] = seen
    assert any(not torch.equal(a, b) for a, b in zip(grads[0.0], grads[0.5], strict=True))


def test_ptb_search_reads_streams_of_training_and_validation_text(tmp_path: Path) -> None:
    """Alpha learns from ptb.valid.txt, the weights from ptb.train.txt, each cut into batch_size
    streams read in order (the next batch continues every stream), the training windows of
    DARTS's variable length."""
    from raynas.data import DATASETS, search_loaders

    folder = tmp_path / "penn"
    folder.mkdir()
    words = [f"w{i}" for i in range(10)]
    g = torch.Generator().manual_seed(0)

    def text(lines: int) -> str:
        return "".join(" ".join(words[int(i)] for i in torch.randint(10, (9,), generator=g)) + "\n"
                       for _ in range(lines))

    (folder / "ptb.train.txt").write_text(text(40))
    (folder / "ptb.valid.txt").write_text(text(10))
    data = DATASETS.create("ptb", DATASETS.entry("ptb").config(path=str(folder), bptt=6, batch_size=4))
    train, valid = search_loaders(data, seed=0)
    streams = data.train_tokens[: len(data.train_tokens) // 4 * 4].view(4, -1)
    position = 0
    lengths = []
    for x, y in train:
        assert x.shape[0] == 4
        torch.testing.assert_close(x, streams[:, position : position + x.shape[1]])
        torch.testing.assert_close(y, streams[:, position + 1 : position + 1 + x.shape[1]])
        position += x.shape[1]
        lengths.append(x.shape[1])
    assert position >= streams.shape[1] - 6 and len(set(lengths)) > 1 and min(lengths) >= 1
    valid_text = data.encode("valid")
    vstreams = valid_text[: len(valid_text) // 4 * 4].view(4, -1)
    first = next(iter(valid))[0]
    torch.testing.assert_close(first, vstreams[:, :6])  # alpha's text, windows of bptt


# -- Recurrent DARTS: the rate scaled by the window's length; evaluation carries the state ----------


def test_recurrent_darts_scales_the_rate_by_the_window_length() -> None:
    """rnn/train_search.py: lr = lr2 * seq_len / bptt for the step (the unrolled step's eta as
    well: architect.step reads the scaled rate), lr2 restored after it."""
    from raynas.config import TrainConfig
    from raynas.strategies.gradient.darts import Darts, DartsConfig
    from raynas.supernet.darts_rnn import DartsRnnSupernet

    torch.manual_seed(0)
    model = DartsRnnSupernet(ntoken=12, nhid=6, nodes=2, activations=("tanh", "relu"), dropout=0.0,
                             dropouth=0.0, dropoutx=0.0, dropouti=0.0, dropoute=0.0, bptt=4)
    train = TrainConfig(epochs=1, learning_rate=0.5, momentum=0.0, weight_decay=0.0)
    strategy = Darts(supernet=model, config=DartsConfig(order=2), train=train)
    etas: list[float] = []
    steps: list[float] = []
    arch_backward = strategy.arch_backward

    def spy_arch(*args):  # type: ignore[no-untyped-def]
        etas.append(strategy.lr)  # the xi of the unrolled step
        return arch_backward(*args)

    optimizer_step = strategy.w_optimizer.step

    def spy_step(*args, **kwargs):  # type: ignore[no-untyped-def]
        steps.append(strategy.w_optimizer.param_groups[0]["lr"])
        return optimizer_step(*args, **kwargs)

    strategy.arch_backward = spy_arch  # type: ignore[method-assign]
    strategy.w_optimizer.step = spy_step  # type: ignore[method-assign]
    text, valid = torch.randint(0, 12, (3, 20)), torch.randint(0, 12, (3, 5))
    for length in (4, 2, 7):
        strategy.step((text[:, :length], text[:, 1 : length + 1]), (valid[:, :4], valid[:, 1:5]))
        assert strategy.lr == 0.5  # restored after the step
    assert steps == pytest.approx([0.5 * n / 4 for n in (4, 2, 7)])
    assert etas == steps


def test_the_recurrent_supernet_takes_bptt_from_the_text() -> None:
    """The supernet of a text searched with data.bptt = 7 scales its rates by windows of 7."""
    from raynas.spaces.darts_rnn import DartsRnnSpace, DartsRnnSpaceConfig
    from raynas.supernet import build_supernet
    from raynas.types import DatasetInfo

    space = DartsRnnSpace(DartsRnnSpaceConfig(channels=4, nodes=2))
    supernet = build_supernet(space, DatasetInfo(name="ptb", in_channels=1, num_classes=10, image_size=7))
    assert supernet.bptt == 7  # type: ignore[attr-defined]


def test_evaluation_carries_the_hidden_state_between_windows_of_a_stream() -> None:
    """rnn/train_search.py's evaluate: consecutive windows of the validation streams, each from
    the hidden state the previous one ended in, score as one pass over the whole text."""
    from raynas.train.loop import evaluate

    model = _tiny_rnn_strategy().model.eval()
    with torch.no_grad():  # weights large enough for the state to matter (initial logits are flat)
        for p in model.parameters():
            p.normal_(0.0, 1.0)
    text = torch.randint(0, 12, (3, 13))  # 3 streams
    windows = [(text[:, i : i + 4], text[:, i + 1 : i + 5]) for i in (0, 4, 8)]
    with torch.no_grad():
        whole = torch.nn.functional.cross_entropy(model(text[:, :12]), text[:, 1:13])
    cpu = torch.device("cpu")
    carried = evaluate(model, windows, cpu, carry_state=True)
    assert carried["valid_loss"] == pytest.approx(float(whole), rel=1e-5)
    assert abs(evaluate(model, windows, cpu)["valid_loss"] - float(whole)) > 1e-2  # zeros each window


def test_the_recurrent_search_reports_the_carried_validation_loss(tmp_path: Path) -> None:
    """The search worker scores the supernet on PTB's validation streams with the state carried."""
    from raynas.runs.supernet_worker import SupernetWorker
    from raynas.train.loop import evaluate
    from tests.test_darts_rnn import tiny_ptb_job

    search = SupernetWorker(tiny_ptb_job(tmp_path, "strategy.order=1", "train.epochs=1"))
    assert search.supernet.bptt == 6  # type: ignore[attr-defined]
    report = search.run_epoch()
    cpu = torch.device("cpu")
    carried = evaluate(search.supernet, search.valid_loader, cpu, carry_state=True)["valid_loss"]
    assert report.metrics["valid_loss"] == pytest.approx(carried, rel=1e-6)
    zeros = evaluate(search.supernet, search.valid_loader, cpu)["valid_loss"]  # each window from zeros
    assert zeros != pytest.approx(carried, rel=1e-6)


def test_the_search_windows_are_bptt_or_half_of_it() -> None:
    """rnn/train_search.py: seq_len = int(bptt if random() < 0.95 else bptt / 2) (its normal
    draw around it is commented out; rnn/train.py's is not)."""
    from raynas.data.ptb import StreamWindows

    sampler = StreamWindows(10**5, 35, torch.Generator().manual_seed(0), variable=True)
    sizes = [size for (_, size), in sampler]
    assert set(sizes) == {35, 17}
    halves = sizes.count(17) / len(sizes)
    assert 0.03 < halves < 0.07, halves
    assert {size for (_, size), in StreamWindows(1000, 35, torch.Generator(), variable=False)} == {35}


# -- Recurrent DARTS: the second-order architecture gradient as rnn/architect.py -----------------


def _authors_rnn_arch_grad(
    model: torch.nn.Module, train: tuple[torch.Tensor, torch.Tensor], hidden_train: torch.Tensor,
    valid: tuple[torch.Tensor, torch.Tensor], hidden_valid: torch.Tensor, eta: float, clip: float,
    decay: float, r: float = 0.01,
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor, dict[str, bool]]:
    """rnn/architect.py's ``_backward_step_unrolled`` (quark0/darts master) written out on copies
    of ``model``: the architecture gradient, its first term grad_alpha L_val(w'), the validation
    stream's next hidden state, and which of the two clips acted."""
    import copy

    def loss(net, batch, hidden):  # type: ignore[no-untyped-def]  # model._loss: NLL, no TAR
        logits, outputs = net.run_outputs(batch[0], hidden)
        return torch.nn.functional.cross_entropy(logits, batch[1]), outputs[-1]

    def clip_(grads):  # type: ignore[no-untyped-def]  # _clip: scaled when over, coefficient returned
        total = sum(g.norm(2) ** 2 for g in grads) ** 0.5
        coef = clip / (total + 1e-6)
        return ([g * coef for g in grads] if coef < 1 else list(grads)), coef

    weights = list(model.weights())  # type: ignore[operator]
    # _compute_unrolled_model: w' = w - eta * (clip(grad_w L_train(w)) + wdecay * w)
    l_train, _ = loss(model, train, hidden_train)
    g_train, clip_coef = clip_(torch.autograd.grad(l_train, weights))
    unrolled = copy.deepcopy(model)
    with torch.no_grad():
        for u, w, g in zip(unrolled.weights(), weights, g_train, strict=True):  # type: ignore[operator]
            u.copy_(w - eta * (g + decay * w))
    # the validation loss at w', from the validation stream's state; its grad_w' clipped, no decay
    l_val, hidden_next = loss(unrolled, valid, hidden_valid)
    dalpha = torch.autograd.grad(l_val, unrolled.arch_parameters(), retain_graph=True)  # type: ignore[operator]
    dtheta = torch.autograd.grad(l_val, list(unrolled.weights()))  # type: ignore[operator]
    vector, valid_coef = clip_(dtheta)
    # _hessian_vector_product: around w (the model, not the unrolled copy), R = r / ||vector||,
    # from the training stream's state, p += R v, p -= 2 R v, difference / 2R
    at_w = copy.deepcopy(model)
    big_r = r / torch.cat([v.flatten() for v in vector]).norm()
    sides = []
    for step in (big_r, -2 * big_r):
        with torch.no_grad():
            for p, v in zip(at_w.weights(), vector, strict=True):  # type: ignore[operator]
                p.add_(step * v)
        sides.append(torch.autograd.grad(loss(at_w, train, hidden_train)[0], at_w.arch_parameters()))  # type: ignore[operator]
    implicit = [(x - y) / (2 * big_r) for x, y in zip(*sides, strict=True)]
    # dalpha - eta * clip_coef * implicit (the training clip's coefficient, even when over 1)
    grads = [g - eta * clip_coef * h for g, h in zip(dalpha, implicit, strict=True)]
    clipped = {"train": bool(clip_coef < 1), "valid": bool(valid_coef < 1)}
    return grads, list(dalpha), hidden_next.detach(), clipped


@pytest.mark.parametrize("clip", [0.2, 10.0], ids=["clipped", "not-clipped"])
def test_recurrent_second_order_gradient_is_rnn_architect(clip: float) -> None:
    """The unrolled architecture gradient on the recurrent supernet (float64) is rnn/architect.py's:
    the training gradient clipped before the weight decay for w'; grad_w' L_val clipped (no decay)
    for the Hessian-vector product, taken by finite differences around w from the training
    stream's state; the implicit term times eta * the training clip's coefficient. The validation
    stream goes on from where the pass at w' ended."""
    import copy

    from raynas.config import TrainConfig
    from raynas.strategies.gradient.darts import Darts, DartsConfig
    from raynas.supernet.darts_rnn import DartsRnnSupernet

    torch.manual_seed(0)
    model = DartsRnnSupernet(ntoken=12, nhid=6, nodes=3, activations=("tanh", "relu", "sigmoid"),
                             dropout=0.0, dropouth=0.0, dropoutx=0.0, dropouti=0.0, dropoute=0.0)
    model = model.double()
    with torch.no_grad():  # weights and alphas large enough for every term to matter
        for p in model.weights():
            p.normal_(0.0, 0.5)
        model.alpha.normal_(0.0, 0.5)
    eta, decay = 2.0, 1e-2
    train = TrainConfig(epochs=1, learning_rate=eta, momentum=0.0, weight_decay=decay, grad_clip=clip)
    strategy = Darts(supernet=model, config=DartsConfig(order=2), train=train)
    text, valid_text = torch.randint(0, 12, (3, 11)), torch.randint(0, 12, (3, 11))
    strategy.step((text[:, :5], text[:, 1:6]), (valid_text[:, :5], valid_text[:, 1:6]))  # states to carry
    hidden_train, hidden_valid = strategy.hidden["train"].clone(), strategy.hidden["valid"].clone()
    assert hidden_train.dtype == torch.float64 and hidden_train.abs().max() > 0.1

    batch, check = (text[:, 5:10], text[:, 6:11]), (valid_text[:, 5:10], valid_text[:, 6:11])
    expected, dalpha, valid_next, clipped = _authors_rnn_arch_grad(
        copy.deepcopy(model), batch, hidden_train, check, hidden_valid, eta, clip, decay)
    assert clipped == {"train": clip < 1, "valid": clip < 1}  # each case as its name says

    seen: list[torch.Tensor] = []
    a_step = strategy.a_optimizer.step

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(model.alpha.grad.detach().clone())  # type: ignore[union-attr]
        return a_step(*args, **kwargs)

    strategy.a_optimizer.step = spy  # type: ignore[method-assign]
    strategy.step(batch, check)
    assert seen[0].dtype == torch.float64
    torch.testing.assert_close(seen[0], expected[0], rtol=1e-5, atol=1e-10)
    torch.testing.assert_close(strategy.hidden["valid"], valid_next, rtol=1e-10, atol=1e-12)

    # The implicit term matters here: the check above is not grad_alpha L_val(w') alone.
    assert float((expected[0] - dalpha[0]).abs().max()) > 1e-2 * float(expected[0].abs().max())


@pytest.mark.parametrize("job", ["pc_darts_cifar10", "adarts_cifar10", "adarts_cifar100"])
def test_the_pc_darts_cifar_jobs_take_the_authors_search_settings(job: str) -> None:
    """PC-DARTS's CIFAR search (and ADARTS's, which builds on it: no code of its own is public)
    against train_search.py's defaults as ../shared/reference/papers.json records them (batch 256,
    lr 0.1 -> 0, 50 epochs, 16 channels, 8 cells, alpha's Adam at 6e-4 with weight decay 1e-3 from
    epoch 15, K = 4), and DARTS's momentum, weight decay, clip and half split, which PC-DARTS keeps."""
    import json

    from raynas.runs import load_job

    root = Path(__file__).parents[1]
    reference = json.loads((root.parent / "shared" / "reference" / "papers.json").read_text())["pc_darts"]
    defaults = reference["search"]["train_search.py_defaults"]
    config = load_job(root / "jobs" / f"{job}.yaml")
    space, strategy, train, data = (config.space.config, config.strategy.config, config.train,
                                    config.data.config)
    assert config.strategy.name == job.split("_cifar")[0]
    assert config.data.name == job.rsplit("_", 1)[1]
    assert (space.channels, space.layers, space.nodes) == (defaults["init_channels"], defaults["layers"], 4)
    assert (strategy.k, strategy.edge_normalization) == (reference["search"]["partial_channel_K"], True)
    assert (strategy.arch_learning_rate, strategy.arch_weight_decay, strategy.arch_start_epoch) == (
        defaults["arch_learning_rate"], defaults["arch_weight_decay"], defaults["arch_updates_start_epoch"])
    assert tuple(strategy.arch_betas) == (0.5, 0.999)
    assert (data.batch_size, train.epochs) == (defaults["batch_size"], defaults["epochs"])
    assert (train.learning_rate, train.learning_rate_min) == (
        defaults["learning_rate"], defaults["learning_rate_min"])
    assert (train.momentum, train.weight_decay, train.grad_clip, data.train_portion) == (0.9, 3e-4, 5.0, 0.5)
    assert config.seed == 2
