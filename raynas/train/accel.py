"""How training uses the hardware: the device, bf16 autocast, the channels-last layout and
``torch.compile`` (whose ``reduce-overhead`` mode replays CUDA graphs on a GPU).

Every setting is off or neutral by default and each is checked on the CPU against the plain
computation (``tests/test_accel.py``): channels-last and compilation give the same outputs and
gradients; bf16 autocast runs the matmuls and convolutions in bf16 while the weights, their
gradients and the optimiser state stay float32 (PyTorch's automatic mixed precision).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from raynas.errors import ConfigError

PRECISIONS = ("fp32", "bf16")
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")


def pick_device(preference: str = "auto") -> torch.device:
    """The device ``execution.device`` names: ``auto`` (the first GPU this process may use, else
    the CPU), ``cpu``, ``cuda`` or ``cuda:N``.

    Raises:
        ConfigError: A GPU was asked for and this process sees none (or not that one).
    """
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(preference)
    if device.type == "cuda":
        visible = torch.cuda.device_count()
        if visible == 0 or (device.index or 0) >= visible:
            raise ConfigError(
                f"execution.device is {preference!r}, but this process sees {visible} GPU(s); use "
                "'auto' or 'cpu', or give each worker a GPU (execution.gpus_per_worker)"
            )
    return device


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """The context the forward passes (and losses) run in: bf16 autocast on ``device`` for
    ``precision: bf16``, nothing for ``fp32``."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision != "fp32":
        raise ConfigError(f"execution.precision is {precision!r}; allowed: {', '.join(PRECISIONS)}")
    return contextlib.nullcontext()


def prepare(
    model: nn.Module, device: torch.device, *, channels_last: bool = True, compile: str = "off"
) -> nn.Module:
    """``model`` on ``device``, in the channels-last layout (where it has 4-d weights) and, for
    ``compile`` other than ``off``, compiled with that ``torch.compile`` mode.

    The returned module shares its parameters with ``model``: save and load ``model``'s state
    (a compiled module's names carry a prefix).
    """
    if compile not in COMPILE_MODES:
        raise ConfigError(f"execution.compile is {compile!r}; allowed: {', '.join(COMPILE_MODES)}")
    model = model.to(device)
    if hasattr(model, "channels_last"):  # the supernets switch their own layout
        model.channels_last = channels_last
    elif channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    if compile == "off":
        return model
    return torch.compile(model, mode=None if compile == "default" else compile)  # type: ignore[return-value]


def unwrap(model: nn.Module) -> nn.Module:
    """The module a compiled one wraps (the module itself when it is not compiled)."""
    return getattr(model, "_orig_mod", model)

