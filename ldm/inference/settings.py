"""A model's configuration as inference reads it: its YAML, the settings of its `inference:` node
(read and checked once), and the resolution it runs at on frames of a given size."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from yaml import YAMLError

from ldm.inference.blending import BLENDS
from ldm.models.diffusion.ddim import SPACINGS
from ldm.util import InputError

PUBLISHED_DDIM_STEPS = 200


def read_config(path: Path) -> DictConfig:
    """A YAML config that has a `model:` node."""
    if not path.is_file():
        raise InputError(f"{path}: no such config file")
    try:
        config = OmegaConf.load(path)
    except (YAMLError, OmegaConfBaseException, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not a readable YAML config ({type(err).__name__})") from None
    if not isinstance(config, DictConfig) or "model" not in config:
        raise InputError(f"{path}: the config has no 'model' node")
    return config


def read_model_config(path: Path) -> DictConfig:
    """The `model:` node of a YAML config."""
    return read_config(path).model


def _whole_number(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


_CHECKS = {
    "ddim_steps": (_whole_number, "a positive whole number"),
    "timestep_spacing": (lambda v: v in SPACINGS, f"one of {', '.join(SPACINGS)}"),
    "align_context": (lambda v: isinstance(v, bool), "true or false"),
    "blend": (lambda v: v in BLENDS, f"one of {', '.join(BLENDS)}"),
    "resolution": (lambda v: v is None or _whole_number(v), "a positive whole number"),
}
"""What each field of the `inference:` node must be, and how the error says it."""


@dataclass(frozen=True)
class InferenceSettings:
    """How a model samples where a command's options do not say: the `inference:` node of its config.
    A field the node leaves out keeps the published demo's setting."""

    ddim_steps: int = PUBLISHED_DDIM_STEPS
    timestep_spacing: str = "leading"
    """DDIM timesteps: LDM's `leading`, which the published numbers were made with, or `trailing`."""
    align_context: bool = False
    """Warp the context frames onto the target's view (the published method feeds them as recorded)."""
    blend: str = "paste"
    """How the result goes into the mask (the published method pastes the decoded pixels)."""
    resolution: int | None = None
    """The short side the model prefers on frames larger than its training size (None: that size)."""

    @classmethod
    def from_config(cls, path: Path) -> InferenceSettings:
        """The settings of the config at `path`; a bad field is one error line naming the file and it."""
        node = read_config(path).get("inference")
        node = {} if node is None else OmegaConf.to_container(node, resolve=True)
        if not isinstance(node, Mapping):
            raise InputError(f"{path}: inference must be a mapping of settings, got {node!r}")
        known = [field.name for field in fields(cls)]
        for name, value in node.items():
            if name not in known:
                raise InputError(
                    f"{path}: inference.{name}: not a setting (the settings: {', '.join(known)})"
                )
            valid, expected = _CHECKS[name]
            if not valid(value):
                raise InputError(f"{path}: inference.{name} must be {expected}, got {value!r}")
        return cls(**node)

    def overridden(self, **options: Any) -> InferenceSettings:
        """These settings with every option that is not None (a command-line flag given) in its place."""
        return replace(self, **{name: value for name, value in options.items() if value is not None})


# ------------------------------------------------------------------------------------- resolution


def model_resolution(model_config: DictConfig, source: Path | str = "config") -> int:
    """The pixel size the model works at: latent size x 2^(number of first-stage downsamplings)."""
    try:
        latent_size = int(model_config.params.unet_config.params.image_size)
        ch_mult = model_config.params.first_stage_config.params.ddconfig.ch_mult
    except (AttributeError, OmegaConfBaseException, TypeError, ValueError):
        raise InputError(
            f"{source}: the model config lacks unet_config image_size or first-stage ch_mult"
        ) from None
    return latent_size * 2 ** (len(ch_mult) - 1)


def resolution_multiple(model_config: DictConfig) -> int:
    """What a working resolution must be a multiple of: the first stage's and the UNet's downsamplings."""
    first_stage = len(model_config.params.first_stage_config.params.ddconfig.ch_mult) - 1
    unet = len(model_config.params.unet_config.params.channel_mult) - 1
    return 2 ** (first_stage + unet)


@dataclass(frozen=True)
class WorkingResolution:
    """For frames of (height, width): the short side the model runs at. `requested` (--resolution) as
    given; else `preferred` (the settings' resolution), but never above the frames' own short side
    (rounded down to a multiple of `multiple`) nor below `trained`, the training size; else `trained`."""

    trained: int
    preferred: int | None = None
    requested: int | None = None
    multiple: int = 1

    def __call__(self, height: int, width: int) -> int:
        if self.requested is not None:
            return self.requested
        if self.preferred is None:
            return self.trained
        fits = min(height, width) // self.multiple * self.multiple
        return min(self.preferred, max(self.trained, fits))


def working_resolution(requested: int | None, preferred: int | None, config: Path) -> WorkingResolution:
    """The WorkingResolution of the model `config` describes, for --resolution `requested` and the
    settings' `preferred` one; a `requested` size must be a multiple of resolution_multiple."""
    model_config = read_model_config(config)
    multiple = resolution_multiple(model_config)
    if requested is not None and requested % multiple:
        raise InputError(f"--resolution {requested}: this model needs a multiple of {multiple}")
    return WorkingResolution(model_resolution(model_config, config), preferred, requested, multiple)
