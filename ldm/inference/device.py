"""Where and in which precision inference runs: the device a command asks for, checked against this
machine, and the dtype (bf16 where the hardware computes it natively)."""

from __future__ import annotations

import contextlib
import logging

import torch

from ldm.util import InputError, enable_tf32

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_CHOICES = ("auto", *DTYPES)
_SUPPORTED = {"cpu": ("fp32", "bf16"), "cuda": ("fp32", "bf16", "fp16"), "mps": ("fp32", "fp16")}


def resolve_device(name: str | None) -> torch.device:
    """`--device` (default: cuda if available, else cpu), checked against this machine."""
    try:
        device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
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
    if device.type == "cuda":
        enable_tf32()
    return device


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 in hardware: CUDA sm80+ (Ampere and later), or a CPU with AMX
    or AVX512-BF16."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        return torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    return False


def emulates_bf16(device: torch.device) -> bool:
    """Whether `device` is a CPU without AMX or AVX512-BF16, where bf16 is emulated, far slower than
    fp32."""
    return device.type == "cpu" and not native_bf16(device)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`--dtype auto|fp32|bf16|fp16`: auto is bf16 where the hardware has native bf16, else fp32;
    an explicit dtype is refused where `device` does not support it."""
    if name == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    if name not in DTYPES:
        raise InputError(f"--dtype {name}: choose one of {', '.join(DTYPE_CHOICES)}")
    supported = _SUPPORTED[device.type]
    if device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        supported = ("fp32", "fp16")
    if name not in supported:
        raise InputError(
            f"--dtype {name} is not supported on {device.type.upper()}; use {' or '.join(supported)}"
        )
    if name == "bf16" and emulates_bf16(device):
        log.warning(
            "--dtype bf16: this CPU has no AMX or AVX512-BF16 and emulates bf16, which runs far slower "
            "than fp32; --dtype auto picks fp32 here"
        )
    return DTYPES[name]


def precision(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Autocast to `dtype` on `device` (a no-op for float32)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
