"""Reading checkpoints safely and loading state dicts into modules (one path for every command).

This module knows the file formats and the released checkpoints' key layout, not the model classes.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import sys
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from ldm.util import first_line

log = logging.getLogger(__name__)

EMA_PREFIX = "model_ema."
DENOISER_PREFIX = "model."
FIRST_STAGE_PREFIX = "first_stage_model."
CONDITIONER_PREFIX = "cond_stage_model."
CONDITIONER_COPY_PREFIX = CONDITIONER_PREFIX + "first_stage_model."
SAFETENSORS_SUFFIXES = (".safetensors",)
SCALE_FACTOR_KEY = "scale_factor"
"""Where a file records the latent scale factor its model was trained with: a metadata key of a
`.safetensors` file, a top-level entry of a Lightning checkpoint (the weights keep their layout)."""
MADV_DONTNEED = 4  # Linux <sys/mman.h>
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def shadow_name(param_name: str) -> str:
    """LDM's EMA buffer name for a parameter: the dotted name with the dots removed."""
    return param_name.replace(".", "")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model; the message is one line."""


@dataclass(frozen=True)
class Weights:
    """A checkpoint's tensors, the latent scale factor it records (None: none recorded) and, for a
    `.safetensors` file, its metadata."""

    state: dict[str, torch.Tensor]
    scale_factor: float | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


def read_weights(path: str | Path, unsafe: bool = False) -> Weights:
    """The tensors of a Lightning `.ckpt`, a plain state dict, or a `.safetensors` file, and the
    latent scale factor the file records.

    `.ckpt` files are read with `weights_only=True` and memory-mapped, so a pickle payload never
    runs and only the tensors that are used are paged in. `unsafe=True` allows arbitrary pickles
    (only for files you trust).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix in SAFETENSORS_SUFFIXES:
        metadata = _safetensors_metadata(path)
        return Weights(
            _read_safetensors(path), _as_scale_factor(metadata.get(SCALE_FACTOR_KEY), path), metadata
        )
    ckpt = _load_pickled(path, unsafe)
    recorded = ckpt.get(SCALE_FACTOR_KEY) if isinstance(ckpt, Mapping) else None
    return Weights(_extract_state_dict(ckpt, path), _as_scale_factor(recorded, path))


def read_state_dict(path: str | Path, unsafe: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file (see `read_weights`)."""
    return read_weights(path, unsafe).state


def _load_pickled(path: Path, unsafe: bool) -> object:
    if unsafe:
        log.warning("loading %s with weights_only=False: a malicious file can run code", path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=not unsafe, mmap=zipfile.is_zipfile(path))
    except Exception as err:  # torch.load raises many types on garbage; all mean "unreadable"
        if "Weights only load failed" in str(err):
            raise CheckpointError(
                f"{path}: holds pickled objects other than tensors, refused for safety; "
                "re-run with --unsafe-load only if you trust this file"
            ) from None
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({first_line(err)})") from None
    return ckpt


def saved_global_step(path: str | Path | None, unsafe: bool = False) -> int:
    """The training step a Lightning checkpoint was saved at (0 for none or a bare state dict)."""
    if path is None or Path(path).suffix in SAFETENSORS_SUFFIXES:
        return 0
    ckpt = torch.load(path, map_location="cpu", weights_only=not unsafe, mmap=zipfile.is_zipfile(path))
    return int(ckpt.get("global_step", 0)) if isinstance(ckpt, Mapping) else 0


def _safetensors_metadata(path: Path) -> dict[str, str]:
    try:
        with safe_open(str(path), "pt") as weights:
            return dict(weights.metadata() or {})
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({first_line(err)})") from None


def _as_scale_factor(value: object, path: Path) -> float | None:
    """A recorded scale factor as a float; an error naming the file when it is not a positive number."""
    if value is None:
        return None
    try:
        factor = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        factor = float("nan")
    if not factor > 0:
        raise CheckpointError(f"{path}: its recorded {SCALE_FACTOR_KEY} {value!r} is not a positive number")
    return factor


def use_recorded_scale_factor(model: nn.Module, recorded: float | None, source: str | Path) -> None:
    """Scale latents as the weights were trained to, where their file records it (it wins over the config)."""
    if recorded is None or not hasattr(model, "scale_factor") or recorded == model.scale_factor:
        return
    log.info(
        "%s: latent scale factor %g, as recorded with the weights (the config says %g)",
        source,
        recorded,
        model.scale_factor,
    )
    model.scale_factor = recorded


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({first_line(err)})") from None


def _extract_state_dict(ckpt: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(ckpt, Mapping) and isinstance(ckpt.get("state_dict"), Mapping):
        ckpt = ckpt["state_dict"]
    if not isinstance(ckpt, Mapping) or not ckpt or not all(torch.is_tensor(v) for v in ckpt.values()):
        raise CheckpointError(
            f"{path}: not a Lightning checkpoint or state dict (no 'state_dict' of tensors)"
        )
    return dict(ckpt)


def first_stage_state(path: str | Path, unsafe: bool = False) -> dict[str, torch.Tensor]:
    """The first-stage tensors of a VQ checkpoint, or of a VIDM checkpoint or weights file (its
    `first_stage_model.*`, renamed)."""
    state = read_state_dict(path, unsafe=unsafe)
    if not any(key.startswith(FIRST_STAGE_PREFIX) for key in state):
        return state
    return {k[len(FIRST_STAGE_PREFIX) :]: v for k, v in state.items() if k.startswith(FIRST_STAGE_PREFIX)}


def file_mappings() -> list[tuple[int, int]]:
    """Address ranges of this process's memory maps of files (Linux; empty elsewhere)."""
    if _LIBC is None:
        return []
    ranges = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].startswith("/"):
                low, high = fields[0].split("-")
                ranges.append((int(low, 16), int(high, 16)))
    return ranges


def release_mapped_pages(tensor: torch.Tensor, mappings: list[tuple[int, int]]) -> None:
    """Let the kernel drop the resident pages of a tensor that lies in a memory-mapped file (one of
    `file_mappings()`), once its data has been copied elsewhere; any other tensor is left alone.

    The file was never written through the mapping, so a later read pages the same bytes in again.
    Without this, every weight copied out of a memory-mapped `.ckpt` (to another dtype or layout)
    would stay in memory twice until the whole file is unmapped.
    """
    first = tensor.data_ptr()
    last = first + tensor.numel() * tensor.element_size()
    if tensor.device.type != "cpu" or not any(low <= first and last <= high for low, high in mappings):
        return
    start = -(-first // mmap.PAGESIZE) * mmap.PAGESIZE
    end = last // mmap.PAGESIZE * mmap.PAGESIZE
    if end > start:
        _LIBC.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), MADV_DONTNEED)


def ema_as_model_weights(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace the denoiser's weights (`model.*`) by their EMA shadows and drop the `model_ema.*` buffers."""
    if not any(k.startswith(EMA_PREFIX) for k in state):
        return dict(state)
    out = {}
    for key, value in state.items():
        if key.startswith(EMA_PREFIX):
            continue
        if key.startswith(DENOISER_PREFIX):
            shadow = EMA_PREFIX + shadow_name(key[len(DENOISER_PREFIX) :])
            if shadow not in state:
                raise CheckpointError(f"checkpoint has EMA weights but no '{shadow}'")
            value = state[shadow]
        out[key] = value
    return out


def describe_mismatch(
    missing: Iterable[str], unexpected: Iterable[str], shapes: Iterable[str], limit: int = 5
) -> str:
    parts = []
    for label, keys in (
        ("missing", list(missing)),
        ("unexpected", list(unexpected)),
        ("wrong shape", list(shapes)),
    ):
        if keys:
            more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
            parts.append(f"{len(keys)} {label}: {', '.join(keys[:limit])}{more}")
    return "; ".join(parts)


def load_state_into(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    source: str | Path,
    strict: bool = True,
    allow_missing: tuple[str, ...] = (),
    assign: bool = False,
) -> None:
    """`model.load_state_dict(state)`, failing with one line that lists the first mismatching keys.

    Keys that start with a prefix in `allow_missing` may be absent even when `strict`. `assign`
    makes the module hold the given tensors instead of copying them (for a model built on the meta
    device).
    """
    own = model.state_dict()
    shapes = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    missing = [k for k in own if k not in state and not k.startswith(allow_missing)]
    unexpected = [k for k in state if k not in own]
    if shapes or (strict and (missing or unexpected)):
        raise CheckpointError(
            f"{source}: does not fit the model built from the config: {describe_mismatch(missing, unexpected, shapes)}"
        )
    if missing or unexpected:
        log.info("%s: %s", source, describe_mismatch(missing, unexpected, []))
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False, assign=assign)


def load_model_weights(
    model: nn.Module,
    path: str | Path,
    strict: bool = True,
    ignore_keys: Iterable[str] = (),
    unsafe: bool = False,
) -> Weights:
    """Load a checkpoint file into `model` (keys starting with an `ignore_keys` entry are dropped);
    returns the tensors that were kept and the scale factor the file records."""
    ignore = tuple(ignore_keys)
    weights = read_weights(path, unsafe=unsafe)
    state = {k: v for k, v in weights.state.items() if not (ignore and k.startswith(ignore))}
    load_state_into(model, state, path, strict=strict)
    return Weights(state, weights.scale_factor)
