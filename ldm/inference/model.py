"""The model an inference command uses: which one (an explicit checkpoint, the released weights, or
the embedded small model), and loading it lean, ready for a device and a dtype.

Loading builds the model on the meta device and hands it the checkpoint's (memory-mapped) tensors
instead of copying them, so a released checkpoint with optimizer state peaks near the size of the
weights that are kept.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ldm.checkpoint import (
    CONDITIONER_PREFIX,
    ema_as_model_weights,
    file_mappings,
    load_state_into,
    read_weights,
    release_mapped_pages,
    use_recorded_scale_factor,
)
from ldm.inference.model_config import inference_config
from ldm.inference.settings import model_resolution, read_model_config
from ldm.models.diffusion.core import SCHEDULE_BUFFERS
from ldm.modules.diffusionmodules.openaimodel import in_device_layout
from ldm.util import ConfigError, InputError, first_line, instantiate_from_config

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
OFFICIAL_CONFIG = Path("configs/inpaint_4frame.yaml")
OFFICIAL_WEIGHTS = Path("models/nohands_weights.ckpt")
SMALL_CONFIG = Path("configs/vidm_small.yaml")
SMALL_WEIGHTS = Path("models/vidm_small/vidm_small.safetensors")
DOWNLOAD_PAGE = "https://matthewchang.github.io/vidm/"
_NORMS = (nn.GroupNorm, nn.LayerNorm, nn.BatchNorm2d)


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


# --------------------------------------------------------------------------------------- loading


def prepare_for_inference(model: nn.Module, device: torch.device | str, dtype: torch.dtype) -> nn.Module:
    """`model` in eval mode on `device`, weights stored in `dtype` once (so autocast never casts them
    per call) except normalisation layers, which keep float32; conv weights in the layout the UNet
    runs in on `device` (in_device_layout). Buffers such as the diffusion schedule stay float32. A weight copied out
    of a memory-mapped checkpoint gives its pages back, so loading peaks near the bytes kept."""
    mappings = file_mappings()
    for module in model.modules():
        for param in module.parameters(recurse=False):
            source = param.data
            data = source.to(device=device, dtype=torch.float32 if isinstance(module, _NORMS) else dtype)
            param.data = in_device_layout(data) if data.dim() in (4, 5) else data
            if param.data.data_ptr() != source.data_ptr():
                release_mapped_pages(source, mappings)
    return model.requires_grad_(False).eval().to(device)


def load_inference_model(model_config: Mapping, checkpoint: str | Path, unsafe: bool = False) -> nn.Module:
    """Build the model from its config and give it a checkpoint's EMA weights, on the CPU.

    Accepts the released Lightning checkpoint (its EMA buffers become the denoiser's weights; the
    training weights and optimizer state are never read) or a file from
    scripts/convert_checkpoint.py. The model is built on the meta device and takes the checkpoint's
    tensors as its own (no copy, no random initialisation); the schedule is then computed on the CPU.
    """
    cfg = inference_config(model_config)
    weights = read_weights(checkpoint, unsafe=unsafe)
    state = ema_as_model_weights(weights.state)
    with torch.device("meta"):
        model = instantiate_from_config(cfg)
    allow_missing: tuple[str, ...] = SCHEDULE_BUFFERS
    if cfg["params"].get("cond_stage_config", {}).get("with_first_stage"):
        # The conditioner holds the first stage and nothing else: its weights come from
        # first_stage_model.* whether the file repeats them as cond_stage_model.first_stage_model.*
        # (VIDM) or as cond_stage_model.* (LDM inpainting_big, whose conditioner is the first stage).
        state = {k: v for k, v in state.items() if not k.startswith(CONDITIONER_PREFIX)}
        allow_missing += (CONDITIONER_PREFIX,)
    load_state_into(model, state, checkpoint, allow_missing=allow_missing, assign=True)
    use_recorded_scale_factor(model, weights.scale_factor, checkpoint)
    model.register_schedule(model.num_timesteps, model.linear_start, model.linear_end)
    unloaded = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if unloaded:
        raise ConfigError(
            f"{checkpoint}: the model has state that the checkpoint does not fill: {unloaded[:5]}"
        )
    return model.eval()


def load_model(
    choice: ModelChoice,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    unsafe: bool = False,
) -> tuple[nn.Module, int]:
    """The chosen model with EMA weights, ready for inference on `device` in `dtype`, and its pixel size."""
    model_config = read_model_config(choice.config)
    resolution = model_resolution(model_config, choice.config)
    try:
        model = load_inference_model(model_config, choice.checkpoint, unsafe=unsafe)
    except ValueError as err:  # ConfigError and the models' own checks: a config that is not buildable
        raise InputError(f"{choice.config}: cannot build the model ({first_line(err)})") from None
    log.info("model: %s", choice.description)
    return prepare_for_inference(model, device, dtype), resolution
