"""MiLeNAS's model-size-based search and early stopping (He et al., CVPR 2020; the authors'
``train_milenas.py``): the size of every epoch's derived architecture at the evaluation size, the
best architecture within a size band, and the stopping rules, on analytic histories and on tiny
real searches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_job

from raynas.config import TrainConfig
from raynas.data import dataset_info
from raynas.errors import ConfigError
from raynas.profile import count_params
from raynas.runs import run_search
from raynas.runs.jobs import parse_job
from raynas.spaces.darts_cnn import DartsCnnSpace
from raynas.strategies.gradient.milenas import Milenas, MilenasConfig
from raynas.supernet import DartsSupernet
from raynas.train.checkpoint import load_checkpoint


def tiny_strategy(**config: object) -> Milenas:
    torch.manual_seed(0)
    supernet = DartsSupernet(
        channels=4, layers=3, nodes=2, stem_multiplier=1, primitives=DartsCnnSpace().config.primitives,
        mixed_op="weighted", num_classes=10,
    )
    return Milenas(supernet=supernet, config=MilenasConfig(**config), train=TrainConfig(epochs=1))  # type: ignore[arg-type]


def test_epoch_metrics_give_the_derived_architectures_size_at_the_evaluation_size() -> None:
    strategy = tiny_strategy()
    with torch.no_grad():  # make the normal cell all sep_conv_3x3, the reduction cell all max pools
        strategy.model.alpha_normal.zero_()[:, 4] = 5.0
        strategy.model.alpha_reduce.zero_()[:, 1] = 5.0
    metrics = strategy.epoch_metrics()
    arch = strategy.genotype()
    # Independently: the space's CIFAR-10 network at the papers' size, 36 channels and 20 cells.
    network = DartsCnnSpace().build(arch, dataset_info("cifar10"))
    assert metrics["eval_params"] == count_params(network)
    assert network.cells[0].ops[0][0][1].in_channels == 36 and len(network.cells) == 20
    assert metrics["convs_normal"] == 4 and metrics["convs_reduce"] == 0  # 2 nodes x 2 edges
    assert tiny_strategy(track_model_size=False).epoch_metrics() == {}


def _history(sizes_m: list[float], accs: list[float]) -> list[dict[str, float]]:
    return [{"eval_params": s * 1e6, "valid_acc": a} for s, a in zip(sizes_m, accs, strict=True)]


def test_final_epoch_is_the_best_inside_the_band() -> None:
    history = _history([2.1, 2.9, 3.2, 3.6, 4.1, 4.4], [0.60, 0.70, 0.74, 0.72, 0.90, 0.91])
    band = MilenasConfig(model_size_band=(3.0, 4.0))
    assert Milenas.final_epoch(band, history) == 2  # 0.74 at 3.2M; the better ones are too large
    assert Milenas.final_epoch(MilenasConfig(model_size_band=(2.0, 3.0)), history) == 1
    assert Milenas.final_epoch(MilenasConfig(), history) == 5  # no band: the last epoch
    assert Milenas.final_epoch(MilenasConfig(model_size_band=(5.0, 6.0)), history) == 5  # none inside
    # A tie goes to the later epoch (the longer search).
    assert Milenas.final_epoch(band, _history([3.1, 3.2], [0.5, 0.5])) == 1


def test_stop_above_band_with_patience_and_at_the_authors_convolution_counts() -> None:
    band = MilenasConfig(model_size_band=(3.0, 4.0))
    assert Milenas.stop_reason(band, _history([3.5], [0.5])) is None
    reason = Milenas.stop_reason(band, _history([3.5, 4.2], [0.5, 0.6]))
    assert reason is not None and "4.20M parameters, above strategy.model_size_band [3.0, 4.0]" in reason
    patient = MilenasConfig(model_size_band=(3.0, 4.0), size_patience=2)
    assert Milenas.stop_reason(patient, _history([3.5, 4.2], [0.5, 0.6])) is None
    assert Milenas.stop_reason(patient, _history([3.5, 4.2, 4.3], [0.5, 0.6, 0.6])) is not None
    assert Milenas.stop_reason(MilenasConfig(model_size_band=(3.0, 4.0), stop_above_band=False),
                               _history([4.5], [0.5])) is None
    convs = MilenasConfig(stop_at_convs=(6, 0))
    assert Milenas.stop_reason(convs, [{"convs_normal": 5.0, "convs_reduce": 0.0}]) is None
    reason = Milenas.stop_reason(convs, [{"convs_normal": 6.0, "convs_reduce": 0.0}])
    assert reason is not None and "keep 6 and 0 convolutions" in reason


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"model_size_band": (4.0, 3.0)}, r"model_size_band must be \[low, high\].*got \[4.0, 3.0\]"),
        ({"model_size_band": (3.0,)}, r"model_size_band must be \[low, high\]"),
        ({"size_patience": 0}, "size_patience must be at least 1, got 0"),
        ({"stop_at_convs": (6,)}, r"stop_at_convs must be \[normal, reduce\]"),
        ({"model_size_band": (1.0, 2.0), "track_model_size": False}, "need strategy.track_model_size: true"),
    ],
)
def test_config_errors(fields: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        MilenasConfig(**fields)


def _search(tmp_path: Path, epochs: int, **strategy: object):
    job = tiny_job(tmp_path, strategy={"name": "milenas", "arch_learning_rate": 0.05, **strategy},
                   train={"epochs": epochs})
    job["strategy"].pop("order")
    result = run_search(parse_job(job), echo=lambda _: None)
    return result, load_checkpoint(result.checkpoint)["history"]


def test_search_records_sizes_and_returns_the_best_epoch_in_the_band(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    result, history = _search(tmp_path, 2, model_size_band=(0.0, 100.0))  # every size is inside
    assert len(history) == 2
    sizes = [h["metrics"]["eval_params"] for h in history]
    assert all(s > 0 for s in sizes)
    accs = [h["metrics"]["valid_acc"] for h in history]
    best = max(range(2), key=lambda i: (accs[i], i))
    assert result.architecture.to_json() == history[best]["architecture"]
    assert result.params_cifar10 == sizes[best]  # the driver's evaluation-size count agrees
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    logged = client.get_metric_history(result.run_id, "eval_params")
    assert [m.value for m in sorted(logged, key=lambda m: m.step)] == sizes


def test_search_stops_once_the_architecture_outgrows_the_band(tmp_path: Path) -> None:
    # Every derived 2-node architecture has far more than 1,000 parameters at the evaluation size.
    result, history = _search(tmp_path, 3, model_size_band=(0.0, 0.001))
    assert len(history) == 1
    assert result.architecture.to_json() == history[0]["architecture"]  # none inside: the last
