"""``raynas export``: a found (retrained) network as a file a serving stack loads without raynas:
ONNX (``torch.onnx``'s TorchScript-based exporter, the batch dimension left free) or TorchScript
(``torch.jit.trace``; torch deprecates it, and the command says so in a line of its own).

The network is the MLflow PyTorch model ``model`` of a run (``run:<id>``: a retraining run's trained
network, or a search's registered one), or an MLflow model folder on disk. Its input shape comes
from the model's signature (raynas logs one with every model), else from ``--input-shape``. The
exported file is logged to the run (``export/<file name>``) when the network came from one.
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from raynas.errors import ConfigError, no_memory
from raynas.tracking.mlflow_tracker import (
    RUN_PREFIX,
    check_server,
    default_tracking_uri,
    open_client,
    run_artifact,
)

FORMATS = ("onnx", "torchscript")
# What torch's warnings say of the TorchScript calls here (torch 2.14: "`torch.jit.trace` is
# deprecated. Please switch to `torch.compile` or `torch.export`.").
_TORCHSCRIPT_DEPRECATED = r"`torch\.jit\.\w+` is deprecated"


@dataclass(frozen=True)
class ExportResult:
    """What was exported and where.

    Attributes:
        path: The written file.
        format: ``onnx`` or ``torchscript``.
        input_shape: The shape of the example input it was traced with (batch first).
        run_id: The MLflow run it came from and was logged to (None for a model folder).
        max_difference: The largest absolute difference between the exported file's outputs and
            the network's on the example input (run with ONNX Runtime or TorchScript; None for
            ONNX without ONNX Runtime installed, where ``onnx.checker`` validates the file).
    """

    path: Path
    format: str
    input_shape: tuple[int, ...]
    run_id: str | None
    max_difference: float | None


class _Logits(nn.Module):
    """A network's logits alone (DARTS networks with an auxiliary head return a pair)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.network(x)
        return out[0] if isinstance(out, (tuple, list)) else out  # type: ignore[no-any-return]


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1x3x32x32"`` -> (1, 3, 32, 32) (batch first)."""
    try:
        shape = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--input-shape {text!r}: expected sizes joined by x, e.g. 1x3x32x32") from None
    if len(shape) < 2 or min(shape) < 1:
        raise ConfigError(f"--input-shape {text!r}: a batch and at least one more positive size")
    return shape


def load_network(source: str, *, client: Any = None) -> tuple[nn.Module, Any, str | None]:
    """The network ``source`` names, its MLflow model description and the run it came from.

    Args:
        source: ``run:<id>`` (the run's model ``model``) or an MLflow model folder.
        client: The ``MlflowClient`` that reads ``run:<id>``.

    Raises:
        ConfigError: The run has no model, or the folder is not an MLflow model.
    """
    import mlflow.pytorch
    from mlflow.models import Model

    run_id = None
    if source.startswith(RUN_PREFIX):
        assert client is not None, "run:<id> needs an MLflow client"
        scratch = tempfile.mkdtemp(prefix="raynas-export-")
        run_id, folder = run_artifact(client, source, "model", "the network that searches and "
                                      "retrainings log", scratch)
    else:
        folder = source
        if not (Path(folder) / "MLmodel").is_file():
            raise ConfigError(
                f"{source!r} is neither run:<MLflow run id> nor an MLflow model folder (with MLmodel)"
            )
    network = mlflow.pytorch.load_model(folder, map_location="cpu")
    return network.eval(), Model.load(folder), run_id


def _example(model_info: Any, shape: tuple[int, ...] | None) -> torch.Tensor:
    if shape is None:
        signature = model_info.signature
        inputs = signature.inputs.inputs if signature is not None else []
        if len(inputs) != 1 or getattr(inputs[0], "shape", None) is None:
            raise ConfigError(
                "the model has no input signature: give its input with --input-shape, e.g. 1x3x32x32"
            )
        shape = tuple(1 if d == -1 else int(d) for d in inputs[0].shape)
        if str(inputs[0].type).startswith("int"):  # token ids (recurrent cells)
            return torch.zeros(shape, dtype=torch.long)
    return torch.randn(shape)


def export_network(
    source: str, *, format: str, out: str | Path, input_shape: tuple[int, ...] | None = None,
    tracking_uri: str | None = None,
) -> ExportResult:
    """Export the network ``source`` names to ``out`` and check the file against it.

    Args:
        source: ``run:<id>`` or an MLflow model folder (see :func:`load_network`).
        format: ``onnx`` or ``torchscript``.
        out: The file to write.
        input_shape: The example input's shape (default: the model's signature, batch 1).
        tracking_uri: The MLflow store of ``run:<id>`` (default: ``MLFLOW_TRACKING_URI``, else
            ``./mlflow.db``), where the file is logged to the run.

    Raises:
        ConfigError: An unknown format, a source without a model, a shape that does not fit.
    """
    if format not in FORMATS:
        raise ConfigError(f"export --format {format!r}: choose one of {', '.join(FORMATS)}")
    client = None
    if source.startswith(RUN_PREFIX):
        uri = tracking_uri or default_tracking_uri()
        check_server(uri, existing=True)
        client = open_client(uri)
    network, model_info, run_id = load_network(source, client=client)
    example = _example(model_info, input_shape)
    wrapped = _Logits(network).eval()
    try:
        with torch.no_grad():
            expected = wrapped(example)
    except RuntimeError as exc:
        if no_memory(exc):
            raise  # not the input: the command line says it as such
        shape = "x".join(map(str, example.shape))
        reason = str(exc).splitlines()[0]
        raise ConfigError(f"the network does not run on a {shape} input ({reason})") from None
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    if format == "onnx":
        torch.onnx.export(
            wrapped, (example,), str(path), input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False,
        )
        got: torch.Tensor | None = _run_onnx(path, example)
    else:
        # torch deprecates torch.jit (a FutureWarning at each of trace, trace_method and load):
        # the format the user asked for still works, and the command's own line says it once.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", _TORCHSCRIPT_DEPRECATED, FutureWarning)
            with torch.no_grad():
                traced = torch.jit.trace(wrapped, (example,))
            traced.save(str(path))  # type: ignore[no-untyped-call]
            with torch.no_grad():
                got = torch.jit.load(str(path))(example)
    difference = None if got is None else float((got - expected).abs().max())
    if run_id is not None and client is not None:
        client.log_artifact(run_id, str(path), "export")
    return ExportResult(path=path, format=format, input_shape=tuple(example.shape), run_id=run_id,
                        max_difference=difference)


def _run_onnx(path: Path, example: torch.Tensor) -> torch.Tensor | None:
    """The ONNX file's output on ``example`` with ONNX Runtime; None where it is not installed
    (``onnx.checker`` validates the file instead)."""
    try:
        import onnxruntime
    except ImportError:
        import onnx

        onnx.checker.check_model(str(path))
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: example.numpy()})
    return torch.from_numpy(out)


__all__ = ["FORMATS", "ExportResult", "export_network", "load_network", "parse_shape"]
