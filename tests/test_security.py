"""What docs/security.md promises of reading files: dataset batches (pickles, possibly from
``s3://``) are read with an unpickler that resolves only numpy's array globals, so a batch that
would run code is refused with one line and exit status 2 and nothing it names is called; the real
formats still load (Python 2's cPickle batches, numpy 1.x and 2.x pickles, protocols 0-5); and no
source file loads a checkpoint, YAML or a pickle in a way that could run code."""

from __future__ import annotations

import ast
import os
import pickle
import re
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port, tiny_job, write_job
from fixtures import write_cifar10

from raynas.cli import main
from raynas.data.cifar import read_batches
from raynas.data.imagenet16 import read_imagenet16
from raynas.data.pickled import ALLOWED_GLOBALS, load_batch
from raynas.errors import DataError

ROOT = Path(__file__).parents[1]


def _py2_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch as Python 2's cPickle (protocol 2) and numpy 1.x wrote CIFAR's: ``str`` keys and
    raw data as SHORT_BINSTRING/BINSTRING, the array through ``numpy.core.multiarray._reconstruct``
    and its dtype through ``numpy.dtype('u1', 0, 1)`` (pickle's opcodes, Lib/pickletools.py)."""

    def string(value: bytes) -> bytes:  # Python 2 str
        if len(value) < 256:
            return b"U" + bytes([len(value)]) + value
        return b"T" + struct.pack("<i", len(value)) + value

    def integer(value: int) -> bytes:
        return b"K" + bytes([value]) if 0 <= value < 256 else b"J" + struct.pack("<i", value)

    rows, cols = data.shape
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + integer(0) + b"\x85"
        + string(b"b") + b"\x87R"
        + b"(" + integer(1) + b"(" + integer(rows) + integer(cols) + b"t"
        + b"cnumpy\ndtype\n" + string(b"u1") + integer(0) + integer(1) + b"\x87R"
        + b"(" + integer(3) + string(b"|") + b"NNN" + integer(-1) + integer(-1) + integer(0) + b"tb"
        + b"\x89" + string(data.tobytes()) + b"tb"
    )
    label_list = b"](" + b"".join(integer(v) for v in labels) + b"e"
    return (b"\x80\x02}(" + string(b"data") + array + string(b"labels") + label_list
            + string(b"batch_label") + string(b"training batch 1 of 5") + b"u.")


def test_python_2_cifar_batches_load(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(_py2_batch(data, [7, 0, 3]))
    images, labels = read_batches(folder, ("data_batch_1",), "labels")
    np.testing.assert_array_equal(images, data.reshape(3, 3, 32, 32))
    np.testing.assert_array_equal(labels, [7, 0, 3])


@pytest.mark.parametrize("protocol", range(6))
def test_numpy_pickles_of_every_protocol_load(tmp_path: Path, protocol: int) -> None:
    rng = np.random.default_rng(protocol)
    batch = {b"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), b"labels": [1, 2],
             b"filenames": [b"a.png", b""], "mean": np.array([0.5, 0.25])}
    raw = pickle.dumps(batch, protocol=protocol)
    paths = {"numpy 2": raw}
    if protocol < 4:  # numpy 1.x named its modules numpy.core.* (a text GLOBAL opcode here)
        assert b"numpy._core." in raw
        paths["numpy 1"] = raw.replace(b"numpy._core.", b"numpy.core.")
    for name, content in paths.items():
        (tmp_path / name).write_bytes(content)
        loaded = load_batch(tmp_path / name, encoding="bytes", what="a batch")
        assert loaded.keys() == batch.keys(), name
        for key, value in batch.items():
            np.testing.assert_array_equal(loaded[key], value)


def test_the_fixture_batches_load(tmp_path: Path) -> None:
    root = write_cifar10(tmp_path)
    images, labels = read_batches(root / "cifar-10-batches-py", ("data_batch_1", "test_batch"), "labels")
    assert images.shape[1:] == (3, 32, 32) and len(images) == len(labels) > 0


class _RunsCode:
    """Unpickled, it would call ``function(*args)``: what a hostile batch file does."""

    def __init__(self, function: object, *args: object) -> None:
        self.function, self.args = function, args

    def __reduce__(self) -> tuple:
        return self.function, self.args


def _hostile(marker: Path) -> dict[str, object]:
    return {
        "os.system": _RunsCode(os.system, f"touch {marker}"),
        "subprocess.call": _RunsCode(subprocess.call, ["touch", str(marker)]),
        "builtins.exec": _RunsCode(exec, f"open({str(marker)!r}, 'w').close()"),
        "numpy's own functions": _RunsCode(np.save, str(marker), np.zeros(1)),
    }


@pytest.mark.parametrize("kind", list(_hostile(Path("x"))))
def test_a_batch_that_would_run_code_is_refused(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "ran"
    payload = _hostile(marker)[kind]
    for protocol in (2, 5):
        path = tmp_path / f"batch-{protocol}"
        path.write_bytes(pickle.dumps({b"data": payload, b"labels": [1]}, protocol=protocol))
        with pytest.raises(DataError, match=r"is not a batch: it names '[\w.]+', which would import or "
                                            r"run code, so it was not loaded"):
            load_batch(path, encoding="bytes", what="a batch")
    assert not marker.exists() and not marker.with_suffix(".npy").exists()


def test_allowed_globals_cannot_be_turned_to_other_uses(tmp_path: Path) -> None:
    """``_codecs.encode`` and ``bytes``, which Python 3 needs for bytes at protocol 2, take only
    their pickled forms: no other codec, no ``bytes(n)`` of n zero bytes."""
    allowed = {f"{m}.{n}" for m, n in ALLOWED_GLOBALS}
    assert allowed == {
        "numpy.ndarray", "numpy.dtype", "numpy.core.multiarray._reconstruct",
        "numpy._core.multiarray._reconstruct", "numpy.core.numeric._frombuffer",
        "numpy._core.numeric._frombuffer", "_codecs.encode", "__builtin__.bytes", "builtins.bytes",
    }
    cases = {
        "codec": b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x09\x00\x00\x00hex_codec\x86R.",
        "size": b"\x80\x02c__builtin__\nbytes\nJ\x00\x00\x00\x40\x85R.",
    }
    for name, raw in cases.items():
        (tmp_path / name).write_bytes(raw)
        with pytest.raises(DataError, match="would import or run code"):
            load_batch(tmp_path / name, encoding="bytes", what="a batch")


def test_imagenet16_refuses_a_batch_that_would_run_code(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    hostile = {"data": _RunsCode(os.system, f"touch {marker}"), "labels": [1]}
    (tmp_path / "val_data").write_bytes(pickle.dumps(hostile))
    with pytest.raises(DataError, match=r"val_data' is not an ImageNet16 batch: it names 'posix.system'"):
        read_imagenet16(tmp_path, ("val_data",))
    assert not marker.exists()


def test_the_cli_refuses_it_with_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "ran"
    root = write_cifar10(tmp_path / "cifar")
    hostile = {b"data": _RunsCode(os.system, f"touch {marker}"), b"labels": [1]}
    (root / "cifar-10-batches-py" / "data_batch_1").write_bytes(pickle.dumps(hostile, protocol=2))
    job = tiny_job(tmp_path, data={"name": "cifar10", "path": str(root), "limit": 0})
    capsys.readouterr()
    assert main(["search", str(write_job(tmp_path, job))]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"raynas: error: '{root / 'cifar-10-batches-py' / 'data_batch_1'}' is not a CIFAR "
                          "python batch: it names 'posix.system', which would import or run code")
    assert not marker.exists()



def test_a_password_in_the_tracking_uri_is_not_in_the_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = f"http://alice:not-shown-5e1f@127.0.0.1:{free_port()}"  # nothing listens there
    capsys.readouterr()
    assert main(["search", str(write_job(tmp_path, tiny_job(tmp_path))), "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert "not-shown-5e1f" not in err and "http://alice:***@127.0.0.1:" in err, err

# --- no unsafe loads anywhere in the source ---------------------------------------------------

YAML_UNSAFE = {"load", "load_all", "unsafe_load", "unsafe_load_all", "full_load", "full_load_all"}
PICKLE_LOADS = {"load", "loads", "Unpickler"}
SOURCE_DIRS = ("raynas", "tests", "benchmarks", "examples")
RESTRICTED_UNPICKLER = Path("raynas/data/pickled.py")


MODULE_NAMES = re.compile(r"\b(torch|yaml|pickle|np|numpy)\b")


def _lines_naming_the_modules(source: str) -> set[int]:
    return {i for i, line in enumerate(source.splitlines(), 1) if MODULE_NAMES.search(line)}


def _nodes_on(tree: ast.AST, lines: set[int]) -> list[ast.AST]:
    """The nodes of ``tree`` whose lines include one of ``lines`` (the rest cannot name the
    modules, so their subtrees are not walked: a whole file's walk takes seconds)."""
    nodes, stack = [], [tree]
    while stack:
        node = stack.pop()
        first, last = getattr(node, "lineno", None), getattr(node, "end_lineno", None)
        if first is not None and last is not None and not any(first <= i <= last for i in lines):
            continue
        nodes.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return nodes


def unsafe_loads(source: str, path: Path) -> list[str]:
    """Calls in ``source`` that could run code from a file: ``torch.load`` without
    ``weights_only=True``; ``yaml.load``, ``full_load``, ``unsafe_load`` (and their ``_all``) or a
    YAML ``Loader``/``UnsafeLoader``/``FullLoader``; ``pickle.load``/``loads``/``Unpickler``
    outside the restricted unpickler; ``numpy.load`` with ``allow_pickle=True``."""
    found = []
    for node in _nodes_on(ast.parse(source), _lines_naming_the_modules(source)):
        if isinstance(node, ast.ImportFrom) and node.module in ("torch", "yaml", "pickle"):
            names = {a.name for a in node.names} & ({"load"} | YAML_UNSAFE | PICKLE_LOADS)
            if names:
                found.append(f"{path}:{node.lineno}: from {node.module} import {', '.join(sorted(names))}")
        if isinstance(node, ast.Attribute) and node.attr in ("Loader", "UnsafeLoader", "FullLoader") \
                and isinstance(node.value, ast.Name) and node.value.id == "yaml":
            found.append(f"{path}:{node.lineno}: yaml.{node.attr}")
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)):
            continue
        module, name = node.func.value.id, node.func.attr
        keywords = {k.arg: k.value for k in node.keywords}
        where = f"{path}:{node.lineno}: {module}.{name}"
        weights_only = keywords.get("weights_only")
        if module == "torch" and name == "load" and not (
            isinstance(weights_only, ast.Constant) and weights_only.value is True
        ):
            found.append(f"{where} without weights_only=True")
        elif (module == "yaml" and name in YAML_UNSAFE) or (
            module == "pickle" and name in PICKLE_LOADS and path != RESTRICTED_UNPICKLER
        ):
            found.append(where)
        elif module in ("np", "numpy") and name == "load":
            allow = keywords.get("allow_pickle")
            if not (allow is None or (isinstance(allow, ast.Constant) and allow.value is False)):
                found.append(f"{where} with allow_pickle")
    return found


def test_the_checker_finds_each_unsafe_load() -> None:
    unsafe = [
        "torch.load(path)", "torch.load(path, weights_only=False)", "torch.load(p, map_location='cpu')",
        "yaml.load(text)", "yaml.load(text, Loader=yaml.Loader)", "yaml.unsafe_load(text)",
        "yaml.full_load(text)", "yaml.load_all(text)", "pickle.load(f)", "pickle.loads(raw)",
        "pickle.Unpickler(f).load()", "np.load(path, allow_pickle=True)", "from torch import load",
        "from yaml import unsafe_load", "x = yaml.UnsafeLoader",
    ]
    for line in unsafe:
        assert unsafe_loads(line, Path("x.py")), line
    safe = ["torch.load(path, map_location='cpu', weights_only=True)", "yaml.safe_load(text)",
            "yaml.safe_load_all(text)", "np.load(path)", "pickle.dumps(x)", "json.load(f)"]
    for line in safe:
        assert unsafe_loads(line, Path("x.py")) == [], line


def test_no_source_file_loads_a_checkpoint_yaml_or_pickle_unsafely() -> None:
    files = [p for d in SOURCE_DIRS for p in sorted((ROOT / d).rglob("*.py"))]
    assert len(files) > 100
    texts = {p: p.read_text() for p in files}
    # Only files whose text has such a call or import are parsed (the checker reads the calls'
    # keywords, which may span lines).
    calls = r"\b(torch|yaml|pickle|np|numpy)\.\w*(load|Load|Unpickler)"
    mentions = re.compile(rf"{calls}|from (torch|yaml|pickle) import")
    found = [hit for p, text in texts.items() if mentions.search(text)
             for hit in unsafe_loads(text, p.relative_to(ROOT))]
    assert found == []


def test_every_test_docs_security_names_exists() -> None:
    """docs/security.md shows each promise by the tests it names: each of them must be there."""
    text = (ROOT / "docs" / "security.md").read_text()
    names = set(re.findall(r"\b(test_\w+)`", text))
    assert len(names) > 15
    defined = {
        name for path in (ROOT / "tests").glob("test_*.py")
        for name in re.findall(r"^def (test_\w+)\(", path.read_text(), re.MULTILINE)
    }
    assert names - defined == set()


def test_every_test_the_readme_and_docs_name_exists() -> None:
    """The README and docs/ show their promises by the tests they name (`tests/test_x.py` and
    `tests/test_x.py::test_y`): each named file must be there, each named test defined in it."""
    documents = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    files: set[str] = set()
    named: set[tuple[str, str]] = set()
    for doc in documents:
        text = doc.read_text()
        files |= set(re.findall(r"tests/test_\w+\.py", text))
        named |= set(re.findall(r"(tests/test_\w+\.py)::(test_\w+)", text))
    assert len(files) > 50 and len(named) > 15
    assert {f for f in files if not (ROOT / f).is_file()} == set()
    missing = {
        f"{path}::{name}" for path, name in named
        if name not in re.findall(r"^def (test_\w+)\(", (ROOT / path).read_text(), re.MULTILINE)
    }
    assert missing == set()
