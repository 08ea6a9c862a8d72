"""Pickled dataset batches (CIFAR's python version, the downsampled ImageNet releases), and other
files of plain data (NAS-Bench-201's release), read with a restricted unpickler.

A pickle can name any importable callable and call it while it loads (``os.system`` through
``__reduce__``), and batch files may come from anywhere, ``s3://`` included. These formats hold
only dicts, lists, tuples, numbers, strings, bytes and numpy arrays, so the unpickler resolves only
the globals that those need, and refuses every other one before anything is imported or called:

- ``numpy.ndarray`` and ``numpy.dtype``: an array's class and its element type;
- ``_reconstruct`` of ``numpy.core.multiarray`` (numpy 1.x, Python 2's cPickle batches included)
  or ``numpy._core.multiarray`` (numpy 2.x): how an array is pickled at protocols 0-4;
- ``_frombuffer`` of ``numpy.core.numeric`` or ``numpy._core.numeric``: an array at protocol 5;
- ``_codecs.encode`` with ``latin1`` only, and ``bytes()`` of nothing: how Python 3 pickles
  ``bytes`` at protocols 0-2 (``__builtin__.bytes`` as Python 2 would spell it).

:class:`PlainUnpickler` resolves what containers and numbers need instead (:data:`PLAIN_GLOBALS`):
``set``, ``frozenset``, ``collections.OrderedDict``, and a NumPy scalar (``scalar`` of
``numpy.core.multiarray`` or ``numpy._core.multiarray``, its ``dtype``, its bytes through
``_codecs.encode``).
"""

from __future__ import annotations

import collections
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from raynas.errors import DataError


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle names a global that a dataset batch never holds (it would import or run code)."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


def _latin1(text: Any, encoding: Any = "utf-8") -> bytes:
    """``_codecs.encode`` as ``bytes`` are pickled (``latin1``); any other use is refused."""
    if encoding != "latin1" or not isinstance(text, str):
        raise UnsafePickleError(f"_codecs.encode with {encoding!r}")
    return text.encode("latin1")


def _empty_bytes(*args: Any) -> bytes:
    """``bytes()`` as an empty ``bytes`` is pickled; ``bytes`` of anything is refused."""
    if args:
        raise UnsafePickleError("bytes of an argument")
    return b""


# numpy's own functions, taken from how it pickles an array (their module moved in numpy 2.0).
_reconstruct = np.zeros(1).__reduce_ex__(2)[0]
_frombuffer = np.zeros(1).__reduce_ex__(5)[0]

ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    **{(f"numpy.{core}.multiarray", "_reconstruct"): _reconstruct for core in ("core", "_core")},
    **{(f"numpy.{core}.numeric", "_frombuffer"): _frombuffer for core in ("core", "_core")},
    ("_codecs", "encode"): _latin1,
    ("__builtin__", "bytes"): _empty_bytes,
    ("builtins", "bytes"): _empty_bytes,
}


_scalar = np.float64(0).__reduce__()[0]  # how numpy pickles a scalar (its module moved in 2.0)

PLAIN_GLOBALS: dict[tuple[str, str], Any] = {
    **{(where, kind.__name__): kind for where in ("builtins", "__builtin__") for kind in (set, frozenset)},
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("numpy", "dtype"): np.dtype,
    **{(f"numpy.{core}.multiarray", "scalar"): _scalar for core in ("core", "_core")},
    ("_codecs", "encode"): _latin1,
}


class BatchUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`ALLOWED_GLOBALS`."""

    allowed: dict[tuple[str, str], Any] = ALLOWED_GLOBALS

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"{module}.{name}"[:200]) from None


class PlainUnpickler(BatchUnpickler):
    """An unpickler that resolves only :data:`PLAIN_GLOBALS`: containers and numbers."""

    allowed = PLAIN_GLOBALS


def load_batch(path: Path, *, encoding: str, what: str) -> Any:
    """Unpickle one batch file, resolving only :data:`ALLOWED_GLOBALS`.

    Args:
        path: The file.
        encoding: How Python 2 ``str`` values are read (``bytes`` or ``latin1``).
        what: The format, for the message, e.g. ``a CIFAR python batch``.

    Returns:
        What the file holds (a dict, in these formats).

    Raises:
        DataError: The pickle names anything else; nothing it names was imported or called.
        pickle.UnpicklingError, EOFError, ValueError, TypeError: The file is not a pickle
            (for the caller's message).
    """
    try:
        with path.open("rb") as f:
            return BatchUnpickler(f, encoding=encoding).load()
    except UnsafePickleError as exc:
        raise DataError(
            f"{str(path)!r} is not {what}: it names {exc.what!r}, which would import or run code, so it "
            "was not loaded (a batch holds only dicts, lists, strings, numbers and numpy arrays)"
        ) from None


__all__ = [
    "ALLOWED_GLOBALS", "PLAIN_GLOBALS", "BatchUnpickler", "PlainUnpickler", "UnsafePickleError", "load_batch",
]
