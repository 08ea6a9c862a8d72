"""``raynas export``: a network logged to an MLflow run, exported as ONNX (run with ONNX Runtime)
and TorchScript, gives the PyTorch network's outputs on new batches of any size, and the file is
logged to the run."""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from mlflow.tracking import MlflowClient

from raynas.cli import main
from raynas.runs.jobs import parse_job
from raynas.spaces import SPACES
from raynas.spaces.darts_cnn import DartsSpaceConfig
from raynas.tracking.mlflow_tracker import MlflowTracker
from raynas.types import DatasetInfo
from tests.conftest import mlflow_store, tiny_job

DIGITS = DatasetInfo("digits", 1, 10, 8)


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, torch.nn.Module]:
    """A trained-looking DARTS network registered in a run as searches and retrainings do it."""
    folder = tmp_path_factory.mktemp("export")
    uri = mlflow_store(folder)
    space = SPACES.create("darts", DartsSpaceConfig(channels=4, layers=3, nodes=2))
    arch = space.sample(random.Random(1))
    torch.manual_seed(0)
    network = space.build(arch, DIGITS, channels=4, layers=3).eval()
    for module in network.modules():  # BatchNorm statistics that are not the identity
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    tracker = MlflowTracker(tracking_uri=uri, experiment="export")
    run_id = tracker.start(parse_job(tiny_job(folder)))
    tracker.register_model(arch, name="raynas-export", network=network, trained=True,
                           example=torch.zeros(1, 1, 8, 8))
    return uri, run_id, network


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_gives_the_networks_outputs_and_is_logged_to_the_run(
    fmt: str, logged: tuple[str, str, torch.nn.Module], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri, run_id, network = logged
    out = tmp_path / f"model.{'onnx' if fmt == 'onnx' else 'pt'}"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(["export", f"run:{run_id}", "--format", fmt, "--out", str(out), "--tracking-uri", uri])
    assert code == 0
    said = capsys.readouterr().out
    assert f"logged to MLflow run {run_id}" in said
    # torch deprecates torch.jit: its FutureWarnings stay off the console; the command's own
    # line says it, once.
    assert not [w for w in caught if "torch.jit" in str(w.message)], [str(w.message) for w in caught]
    assert said.count("deprecates TorchScript") == (fmt == "torchscript"), said
    batch = torch.randn(3, 1, 8, 8)  # another batch size than the example's: the batch is free
    with torch.no_grad():
        expected = network(batch).numpy()
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        (got,) = session.run(None, {session.get_inputs()[0].name: batch.numpy()})
    else:
        with torch.no_grad(), warnings.catch_warnings():  # (torch's deprecation of torch.jit: above)
            warnings.simplefilter("ignore", FutureWarning)
            got = torch.jit.load(str(out))(batch).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    logged_files = {a.path for a in MlflowClient(uri).list_artifacts(run_id, "export")}
    assert f"export/{out.name}" in logged_files


def test_export_reads_an_mlflow_model_folder_and_refuses_what_it_cannot_export(
    logged: tuple[str, str, torch.nn.Module], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri, run_id, _ = logged
    folder = MlflowClient(uri).download_artifacts(run_id, "model", str(tmp_path))
    out = tmp_path / "folder.onnx"
    assert main(["export", folder, "--format", "onnx", "--out", str(out)]) == 0
    assert out.stat().st_size > 0
    assert main(["export", "run:0123456789abcdef", "--format", "onnx", "--out", str(out),
                 "--tracking-uri", uri]) == 2
    assert (f"there is no MLflow run '0123456789abcdef' at {uri}; name the store that holds it with "
            "--tracking-uri or MLFLOW_TRACKING_URI") in capsys.readouterr().err
    bare = MlflowClient(uri).create_run(MlflowClient(uri).create_experiment("bare")).info.run_id
    assert main(["export", f"run:{bare}", "--format", "onnx", "--out", str(out), "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert f"MLflow run '{bare}' at {uri} has no 'model', the network that searches" in err
    (tmp_path / "a-file").write_text("not a folder")
    assert main(["export", f"run:{run_id}", "--format", "onnx", "--out", str(tmp_path / "a-file" / "m.onnx"),
                 "--tracking-uri", uri]) == 2  # where it writes is checked before the model is read
    assert f"cannot create the folder {tmp_path / 'a-file'}: a file has that name" in capsys.readouterr().err
    missing = tmp_path / "elsewhere" / "mlflow.db"  # a store that is not there is not made
    assert main(["export", "run:0123456789abcdef", "--format", "onnx", "--out", str(out),
                 "--tracking-uri", f"sqlite:///{missing}"]) == 2
    assert f"there is no MLflow store at sqlite:///{missing}" in capsys.readouterr().err
    assert not missing.parent.exists()
    assert main(["export", str(tmp_path), "--format", "onnx", "--out", str(out)]) == 2
    assert "MLflow model folder" in capsys.readouterr().err
    assert main(["export", folder, "--format", "onnx", "--out", str(out), "--input-shape", "1x3x32x32"]) == 2
    assert "does not run on a 1x3x32x32 input" in capsys.readouterr().err


def test_a_large_input_is_registered_with_its_signature_but_no_input_example_and_still_exports(
    logged: tuple[str, str, torch.nn.Module], tmp_path: Path
) -> None:
    """Inputs of more than EXAMPLE_PIXELS pixels (a Cityscapes image made a 63 MB model of
    zeros): the signature has the full shape, worked out on meta tensors, and no example is
    written; the export reads the shape from the signature and gives the network's outputs."""
    import mlflow.models

    from raynas.tracking.mlflow_tracker import EXAMPLE_PIXELS

    uri, _, network = logged
    side = 96
    assert side * side > EXAMPLE_PIXELS
    tracker = MlflowTracker(tracking_uri=uri, experiment="export-large")
    run_id = tracker.start(parse_job(tiny_job(tmp_path)))
    tracker.register_model(random_arch(), name="raynas-export-large", network=network, trained=True,
                           example=torch.zeros(1, 1, side, side))
    folder = Path(MlflowClient(uri).download_artifacts(run_id, "model", str(tmp_path)))
    info = mlflow.models.Model.load(str(folder))
    assert info.saved_input_example_info is None
    assert not (folder / "input_example.json").exists()
    (inputs,), (outputs,) = info.signature.inputs.inputs, info.signature.outputs.inputs
    assert inputs.shape == (-1, 1, side, side) and outputs.shape == (-1, 10)
    assert str(outputs.type) == "float32"
    out = tmp_path / "large.onnx"
    args = ["export", f"run:{run_id}", "--format", "onnx", "--out", str(out), "--tracking-uri", uri]
    assert main(args) == 0
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert tuple(session.get_inputs()[0].shape[1:]) == (1, side, side)
    batch = torch.randn(2, 1, side, side)
    with torch.no_grad():
        expected = network(batch).numpy()
    (got,) = session.run(None, {session.get_inputs()[0].name: batch.numpy()})
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def random_arch() -> object:
    space = SPACES.create("darts", DartsSpaceConfig(channels=4, layers=3, nodes=2))
    return space.sample(random.Random(1))
