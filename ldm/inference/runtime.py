"""Device and precision: which device to run on, which dtypes it supports, and casting the model."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ldm.inference.errors import InputError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_SUPPORTED = {"cpu": ("fp32", "bf16"), "cuda": ("fp32", "bf16", "fp16"), "mps": ("fp32", "fp16")}
_NORMS = (nn.GroupNorm, nn.LayerNorm, nn.BatchNorm2d)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(name: str | None) -> torch.device:
    """`--device` (default: cuda if available, else cpu), checked against this machine."""
    try:
        device = torch.device(name or default_device())
    except (RuntimeError, ValueError):
        raise InputError(f"--device {name}: not a device name (try cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise InputError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"--device {name}: MPS is not available on this machine (use --device cpu)")
    if device.type not in _SUPPORTED:
        raise InputError(f"--device {name}: unsupported device type (use cpu, cuda or mps)")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`--dtype fp32|bf16|fp16`, refused where `device` does not support it."""
    if name not in DTYPES:
        raise InputError(f"--dtype {name}: choose one of {', '.join(DTYPES)}")
    supported = _SUPPORTED[device.type]
    if device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        supported = ("fp32", "fp16")
    if name not in supported:
        raise InputError(
            f"--dtype {name} is not supported on {device.type.upper()}; use {' or '.join(supported)}"
        )
    return DTYPES[name]


def cast_weights(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Store the weights of `model` in `dtype`, except normalisation layers and buffers.

    Norms keep float32 weights (they compute in float32), and buffers such as the diffusion
    schedule stay float32, so the sampler's arithmetic keeps its precision.
    """
    if dtype == torch.float32:
        return model
    for module in model.modules():
        if isinstance(module, _NORMS):
            continue
        for param in module.parameters(recurse=False):
            param.data = param.data.to(dtype)
    return model


def precision(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Autocast to `dtype` on `device` (a no-op for float32)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
