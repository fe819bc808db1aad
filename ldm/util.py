"""Small helpers shared by the whole package."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import torch

_NONE_TARGETS = ("__is_first_stage__", "__is_unconditional__")


def get_obj_from_str(path: str) -> Any:
    """Import `package.module.Name` and return `Name`."""
    module, _, name = path.rpartition(".")
    if not module:
        raise ValueError(f"'{path}' is not a dotted import path")
    return getattr(importlib.import_module(module), name)


def instantiate_from_config(config: Mapping | str, **extra: Any) -> Any:
    """Build `config.target(**config.params, **extra)`.

    Keys other than `target` and `params` (such as `with_first_stage`) are read by the caller.
    The LDM placeholders `__is_first_stage__` and `__is_unconditional__` yield None.
    """
    if isinstance(config, str) and config in _NONE_TARGETS:
        return None
    if not isinstance(config, Mapping) or "target" not in config:
        raise KeyError(f"config node has no 'target': {config!r}")
    params = dict(config.get("params") or {})
    params.update(extra)
    return get_obj_from_str(config["target"])(**params)


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
