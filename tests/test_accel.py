"""The hardware settings (``execution.device``, ``precision``, ``channels_last``, ``compile``;
:mod:`raynas.train.accel`) checked on the CPU against the plain computation: channels-last and
compiled training give the same losses, gradients and weights (1e-5); bf16 autocast runs the
convolutions in bf16 while weights, gradients and optimiser state stay float32, and its loss
stays within bf16's precision of float32's."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from raynas.cli import main
from raynas.config import ExecutionConfig, TrainConfig
from raynas.errors import ConfigError
from raynas.ops import PRIMITIVES
from raynas.spaces.darts_genotype import published_genotype
from raynas.spaces.darts_nets import NetworkCIFAR
from raynas.strategies.gradient.darts import Darts, DartsConfig
from raynas.supernet.darts import DartsSupernet
from raynas.train.accel import autocast, pick_device, prepare, unwrap
from raynas.train.loop import fit, search_epoch, train_epoch

TOL = {"rtol": 1e-5, "atol": 1e-5}
CPU = torch.device("cpu")


def network(seed: int = 0) -> NetworkCIFAR:
    torch.manual_seed(seed)
    return NetworkCIFAR(genotype=published_genotype("DARTS_V2"), channels=4, layers=3, num_classes=5)


def small_supernet() -> DartsSupernet:
    return DartsSupernet(channels=4, layers=2, nodes=2, stem_multiplier=3, primitives=PRIMITIVES,
                         mixed_op="weighted", num_classes=5, in_channels=3)


def batches(n: int = 2, size: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(size, 3, 16, 16, generator=g), torch.randint(0, 5, (size,), generator=g))
            for _ in range(n)]


def one_step(
    model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], **kw: object
) -> dict[str, torch.Tensor]:
    """The loss and every weight's gradient after one training step's backward pass."""
    model.train()
    x, y = batch
    with autocast(CPU, str(kw.get("precision", "fp32"))):
        loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in unwrap(model).named_parameters()}
    return {"loss": loss.detach(), **grads}


def test_auto_is_the_cpu_without_a_gpu_and_cpu_is_always_allowed() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device("auto").type == expected
    assert pick_device("cpu") == CPU


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_a_gpu_without_one_is_a_config_error_naming_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"execution.device is 'cuda', but this process sees 0 GPU"):
        pick_device("cuda")


def test_cuda_on_ray_workers_without_gpus_is_refused_and_a_bad_device_lists_the_allowed() -> None:
    with pytest.raises(ConfigError, match="gpus_per_worker > 0"):
        ExecutionConfig(device="cuda")
    assert ExecutionConfig(device="cuda:1", gpus_per_worker=1).device == "cuda:1"
    with pytest.raises(ConfigError, match="must be auto, cpu, cuda or cuda:N"):
        ExecutionConfig(device="gpu0")


def test_the_device_flag_sets_execution_device(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"name": "j", "space": {"name": "darts"}, "strategy": {"name": "darts"},
                                   "data": {"name": "digits"}}))
    assert main(["search", str(job), "--device", "tpu"]) == 2
    assert "execution.device" in capsys.readouterr().err


def test_channels_last_trains_as_the_contiguous_layout_does() -> None:
    batch = batches(1)[0]
    plain = one_step(prepare(network(), CPU, channels_last=False), batch)
    nhwc = prepare(network(), CPU, channels_last=True)
    assert next(p for p in nhwc.parameters() if p.dim() == 4).is_contiguous(memory_format=torch.channels_last)
    fast = one_step(nhwc, batch)
    assert plain.keys() == fast.keys()
    for name in plain:
        torch.testing.assert_close(fast[name], plain[name], **TOL, msg=name)


def test_a_supernet_takes_its_layout_from_the_setting() -> None:
    supernet = small_supernet()
    assert not prepare(supernet, CPU, channels_last=False).channels_last
    assert prepare(supernet, CPU, channels_last=True).channels_last


class Tiny(nn.Module):
    """Small enough for inductor to compile in seconds on 2 cores."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
        self.classifier = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))  # (B, 5)


def test_a_compiled_network_trains_as_the_eager_one_and_saves_a_plain_state() -> None:
    # reduce-overhead is the mode that replays CUDA graphs on a GPU; on the CPU it compiles as
    # the default mode does.
    data = batches(2)
    kwargs = dict(epochs=1, learning_rate=0.05, momentum=0.9, weight_decay=3e-4, grad_clip=5.0)
    torch.manual_seed(0)
    eager = Tiny()
    torch.manual_seed(0)
    plain = Tiny()
    (metrics, state), = list(fit(prepare(eager, CPU, channels_last=False), data, data[:1], CPU, **kwargs))
    compiled = prepare(plain, CPU, channels_last=False, compile="reduce-overhead")
    assert compiled is not plain and unwrap(compiled) is plain
    (c_metrics, c_state), = list(fit(compiled, data, data[:1], CPU, **kwargs))
    for key in ("train_loss", "valid_loss", "valid_acc"):
        assert c_metrics[key] == pytest.approx(metrics[key], rel=1e-5, abs=1e-6)
    assert c_state["model"].keys() == state["model"].keys()  # no "_orig_mod." prefix
    for name, value in state["model"].items():
        torch.testing.assert_close(c_state["model"][name], value, **TOL, msg=name)
    with pytest.raises(ConfigError, match="allowed: off, default, reduce-overhead, max-autotune"):
        prepare(Tiny(), CPU, compile="fast")


def test_bf16_runs_convolutions_in_bf16_keeps_float32_weights_and_gradients() -> None:
    batch = batches(1)[0]
    reference = one_step(network(), batch)
    model = network()
    seen: list[torch.dtype] = []
    for conv in (m for m in model.modules() if isinstance(m, nn.Conv2d)):
        conv.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    mixed = one_step(model, batch, precision="bf16")
    assert seen and set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())
    # bf16 keeps 8 bits of mantissa: the loss agrees to about 1%.
    assert float(mixed["loss"]) == pytest.approx(float(reference["loss"]), rel=2e-2)


def test_a_bf16_search_epoch_runs_the_supernet_in_bf16_and_keeps_float32_weights() -> None:
    torch.manual_seed(0)
    supernet = small_supernet()
    twin = copy.deepcopy(supernet)
    seen: list[torch.dtype] = []
    for conv in (m for m in twin.modules() if isinstance(m, nn.Conv2d)):
        conv.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    data = batches(2)
    runs = {}
    for precision, model in (("fp32", supernet), ("bf16", twin)):
        strategy = Darts(supernet=model, config=DartsConfig(), train=TrainConfig(epochs=1))
        runs[precision] = search_epoch(strategy, data, data, CPU, precision=precision)
    assert seen and set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in twin.parameters())
    weights = [(a, b) for a, b in zip(supernet.weights(), twin.weights(), strict=True)]
    assert any(not torch.equal(a, b) for a, b in weights)  # bf16 rounding moved them...
    for a, b in weights:
        torch.testing.assert_close(b, a, rtol=0, atol=2e-2)  # ...a little
    assert runs["bf16"]["train_loss"] == pytest.approx(runs["fp32"]["train_loss"], rel=2e-2)


def test_train_epoch_takes_the_precision_of_the_job() -> None:
    model = network()
    seen: list[torch.dtype] = []
    model.classifier.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    train_epoch(model, optimizer, batches(1), CPU, precision="bf16")
    assert seen == [torch.bfloat16]
