"""Initialise VIDM (3D UNet) from the LDM `inpainting_big` checkpoint (2D UNet)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ldm.checkpoint import (
    CONDITIONER_COPY_PREFIX,
    EMA_PREFIX,
    CheckpointError,
    describe_mismatch,
    read_state_dict,
)
from ldm.modules.ema import shadow_name

log = logging.getLogger(__name__)

UNET_PREFIX = "model.diffusion_model."
OUT_HEAD = UNET_PREFIX + "out."


def _final_conv_renames(model: nn.Module) -> dict[str, str | None]:
    """Target key → source key for the output head when a frame-join conv is inserted.

    The 2D head is out.0 norm, out.2 conv; the 3D head is out.0 norm, out.2 join, out.4 conv.
    The join conv (and its EMA shadow) has no source (None).
    """
    names = [name for name, _ in model.named_parameters()]
    if not any(name.startswith(OUT_HEAD + "4.") for name in names):
        return {}
    renames: dict[str, str | None] = {}
    for name in names:
        if not name.startswith(OUT_HEAD):
            continue
        index, _, leaf = name[len(OUT_HEAD) :].partition(".")
        source = {"2": None, "4": f"{OUT_HEAD}2.{leaf}"}.get(index, name)
        renames[name] = source
        if getattr(model, "use_ema", False):
            ema_key = EMA_PREFIX + shadow_name(name[len("model.") :])
            renames[ema_key] = source and EMA_PREFIX + shadow_name(source[len("model.") :])
    return renames


class InpaintingInit:
    """Load a 2D inpainting checkpoint into a (3D) LatentDiffusion.

    init3d: a 2D conv kernel (O,I,k,k) whose target has one more dimension gets a unit frame axis
    (O,I,1,k,k); the set is derived from shapes. insert_out_layer: the 2D final conv `out.2` goes to
    `out.4` and the new join conv `out.2` keeps its fresh initialisation. The conditioner's copy of
    the first stage is the same module as the first stage, so it is filled with it.
    """

    def __init__(
        self, weights: str | Path, init3d: bool = True, insert_out_layer: bool = True, unsafe: bool = False
    ):
        self.weights = Path(weights)
        self.init3d = init3d
        self.insert_out_layer = insert_out_layer
        self.unsafe = unsafe

    def init(self, model: nn.Module) -> None:
        """Load `weights` into `model` (the published initializer interface)."""
        log.info("initialising from %s", self.weights)
        self.apply(model, read_state_dict(self.weights, unsafe=self.unsafe))

    __call__ = init

    def apply(self, model: nn.Module, source: Mapping[str, torch.Tensor]) -> None:
        target = model.state_dict()
        renames = _final_conv_renames(model) if self.insert_out_layer else {}
        loaded, missing, wrong = {}, [], []
        for key, current in target.items():
            if key.startswith(CONDITIONER_COPY_PREFIX):
                continue
            src = renames.get(key, key)
            if src is None:
                continue
            if src not in source:
                missing.append(key)
                continue
            value = source[src]
            if self.init3d and value.dim() + 1 == current.dim():
                value = value.unsqueeze(2)
            if value.shape != current.shape:
                wrong.append(f"{key} {tuple(value.shape)} vs {tuple(current.shape)}")
                continue
            loaded[key] = value
        if missing or wrong:
            raise CheckpointError(
                f"{self.weights}: cannot initialise the model: {describe_mismatch(missing, [], wrong)}"
            )
        model.load_state_dict(loaded, strict=False)
        log.info("initialised %d tensors from %s", len(loaded), self.weights)
