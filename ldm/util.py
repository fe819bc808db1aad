"""Small helpers shared by the whole package: building objects from configs, one-line errors, pixels,
files written whole or not at all."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

_NONE_TARGETS = ("__is_first_stage__", "__is_unconditional__")
PARTIAL_SUFFIX = ".partial"


class InputError(ValueError):
    """Bad user input (a file, a folder, an option) named in a one-line message,
    e.g. 'frames/00003.jpg: truncated image'."""


class ConfigError(ValueError):
    """A config node that does not describe something buildable; the message is one line."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type name if it has none)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def get_obj_from_str(path: str) -> Any:
    """Import `package.module.Name` and return `Name`."""
    module, _, name = path.rpartition(".")
    if not module:
        raise ConfigError(f"target '{path}' is not a dotted import path")
    try:
        return getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as err:
        raise ConfigError(f"target '{path}': no module named '{err.name}'") from None
    except AttributeError:
        raise ConfigError(f"target '{path}': module {module} has no '{name}'") from None


def instantiate_from_config(config: Mapping | str, **extra: Any) -> Any:
    """Build `config.target(**config.params, **extra)`.

    Keys other than `target` and `params` (such as `with_first_stage`) are read by the caller.
    The LDM placeholders `__is_first_stage__` and `__is_unconditional__` yield None. A target that
    cannot be imported, or params its signature does not take, raise ConfigError.
    """
    if isinstance(config, str) and config in _NONE_TARGETS:
        return None
    if not isinstance(config, Mapping) or "target" not in config:
        raise ConfigError(f"config node has no 'target': {config!r}")
    params = dict(config.get("params") or {})
    params.update(extra)
    target = get_obj_from_str(config["target"])
    try:
        inspect.signature(target).bind(**params)
    except TypeError as err:
        raise ConfigError(f"{config['target']}: {err}") from None
    except ValueError:  # builtins without a signature: let the call itself check
        pass
    return target(**params)


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N,C,H,W) tensor in [-1,1] → (N,H,W,C) uint8 array; one channel is repeated to three."""
    if images.dim() != 4:
        raise ValueError(f"expected images (N,C,H,W), got shape {tuple(images.shape)}")
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    scaled = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round()
    return scaled.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def enable_tf32() -> None:
    """Let float32 matmuls on CUDA use TF32 tensor cores (convolutions already do by default).

    Through `torch.set_float32_matmul_precision`, the API Lightning reads back: setting the newer
    `torch.backends.cuda.matmul.fp32_precision` instead makes Lightning's check of an Ampere-or-newer
    GPU raise ("mix of the legacy and new APIs"), so no run could start there.
    """
    torch.set_float32_matmul_precision("high")


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary name next to `path`; rename it to `path` only when the block completes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + PARTIAL_SUFFIX)
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
