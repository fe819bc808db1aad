"""Which model a command uses (an explicit checkpoint, the released weights, or the embedded small
model), and loading it for inference."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn
from yaml import YAMLError

from ldm.checkpoint import CheckpointError, load_inference_model
from ldm.inference.errors import InputError, first_line
from ldm.inference.runtime import cast_weights

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
OFFICIAL_CONFIG = Path("configs/inpaint_4frame.yaml")
OFFICIAL_WEIGHTS = Path("models/nohands_weights.ckpt")
SMALL_CONFIG = Path("configs/vidm_small.yaml")
SMALL_WEIGHTS = Path("models/vidm_small/vidm_small.safetensors")
DOWNLOAD_PAGE = "https://matthewchang.github.io/vidm/"


@dataclass(frozen=True)
class ModelChoice:
    config: Path
    checkpoint: Path
    description: str


def choose_model(
    checkpoint: Path | None = None, config: Path | None = None, root: Path | None = None
) -> ModelChoice:
    """`checkpoint` (with `config`, default the official one); else the released weights under `root`;
    else the embedded small model; else an error that says where to get the weights.

    Default locations are relative to `root` (default: the repository), not the working directory.
    """
    root = root or REPO_ROOT
    if checkpoint is not None:
        config = config or root / OFFICIAL_CONFIG
        return ModelChoice(config, checkpoint, f"{checkpoint} with config {config}")
    if config is not None:
        raise InputError(f"--config {config} needs --checkpoint (the default models bring their own configs)")
    if (root / OFFICIAL_WEIGHTS).is_file():
        return ModelChoice(
            root / OFFICIAL_CONFIG,
            root / OFFICIAL_WEIGHTS,
            f"the released VIDM weights {root / OFFICIAL_WEIGHTS}",
        )
    if (root / SMALL_WEIGHTS).is_file() and (root / SMALL_CONFIG).is_file():
        return ModelChoice(
            root / SMALL_CONFIG,
            root / SMALL_WEIGHTS,
            f"the embedded small model {root / SMALL_WEIGHTS} (the released weights are absent)",
        )
    raise InputError(
        f"no model weights: download nohands_weights.ckpt from {DOWNLOAD_PAGE} and put it at "
        f"{root / OFFICIAL_WEIGHTS} (or pass --checkpoint FILE)"
    )


def read_model_config(path: Path) -> DictConfig:
    """The `model:` node of a YAML config."""
    if not path.is_file():
        raise InputError(f"{path}: no such config file")
    try:
        config = OmegaConf.load(path)
    except (YAMLError, OmegaConfBaseException, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not a readable YAML config ({type(err).__name__})") from None
    if not isinstance(config, DictConfig) or "model" not in config:
        raise InputError(f"{path}: the config has no 'model' node")
    return config.model


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


def load_model(
    choice: ModelChoice,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    unsafe: bool = False,
) -> tuple[nn.Module, int]:
    """The chosen model with EMA weights in eval mode on `device` (weights in `dtype`), and its pixel size."""
    model_config = read_model_config(choice.config)
    resolution = model_resolution(model_config, choice.config)
    try:
        model = load_inference_model(model_config, choice.checkpoint, device="cpu", unsafe=unsafe)
    except CheckpointError:
        raise
    except Exception as err:  # a config that does not describe a buildable model fails in many ways
        raise InputError(
            f"{choice.config}: cannot build the model ({type(err).__name__}: {first_line(err)})"
        ) from None
    log.info("model: %s", choice.description)
    return cast_weights(model, dtype).to(device), resolution
