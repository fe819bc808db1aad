"""The model an inference command uses: which one (an explicit checkpoint, the released weights, or
the embedded small model), on which device and in which precision, and loading it lean.

Loading builds the model on the meta device and hands it the checkpoint's (memory-mapped) tensors
instead of copying them, so a released checkpoint with optimizer state peaks near the size of the
weights that are kept.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn
from yaml import YAMLError

from ldm.checkpoint import (
    CONDITIONER_PREFIX,
    ema_as_model_weights,
    file_mappings,
    load_state_into,
    read_weights,
    release_mapped_pages,
    use_recorded_scale_factor,
)
from ldm.inference.blending import BLENDS
from ldm.models.diffusion.core import SCHEDULE_BUFFERS
from ldm.models.diffusion.ddim import SPACINGS
from ldm.modules.diffusionmodules.openaimodel import in_device_layout
from ldm.util import (
    ConfigError,
    InputError,
    enable_tf32,
    first_line,
    get_obj_from_str,
    instantiate_from_config,
)

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
OFFICIAL_CONFIG = Path("configs/inpaint_4frame.yaml")
OFFICIAL_WEIGHTS = Path("models/nohands_weights.ckpt")
SMALL_CONFIG = Path("configs/vidm_small.yaml")
SMALL_WEIGHTS = Path("models/vidm_small/vidm_small.safetensors")
DOWNLOAD_PAGE = "https://matthewchang.github.io/vidm/"
PUBLISHED_DDIM_STEPS = 200

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_CHOICES = ("auto", *DTYPES)
_SUPPORTED = {"cpu": ("fp32", "bf16"), "cuda": ("fp32", "bf16", "fp16"), "mps": ("fp32", "fp16")}
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


def inference_defaults(path: Path) -> Mapping[str, Any]:
    """The config's `inference:` node: the sampling settings a model documents it was measured with."""
    return read_config(path).get("inference", {})


def default_ddim_steps(path: Path) -> int:
    """DDIM steps when --steps is not given: the config's `inference.ddim_steps`, else the published demo's 200."""
    return int(inference_defaults(path).get("ddim_steps", PUBLISHED_DDIM_STEPS))


def default_timestep_spacing(path: Path) -> str:
    """DDIM timestep spacing when --spacing is not given: the config's `inference.timestep_spacing`,
    else LDM's `leading`, which the published numbers were made with."""
    spacing = str(inference_defaults(path).get("timestep_spacing", "leading"))
    if spacing not in SPACINGS:
        raise InputError(
            f"{path}: inference.timestep_spacing must be one of {', '.join(SPACINGS)}, got {spacing!r}"
        )
    return spacing


def default_context_alignment(path: Path) -> bool:
    """Whether context frames are warped onto the target's view when --align-context is not given:
    the config's `inference.align_context`, else no (the published method feeds them as recorded)."""
    value = inference_defaults(path).get("align_context", False)
    if not isinstance(value, bool):
        raise InputError(f"{path}: inference.align_context must be true or false, got {value!r}")
    return value


def default_blend(path: Path) -> str:
    """How the inpainted region goes back into the frame when --blend is not given: the config's
    `inference.blend`, else `paste` (the published method pastes the decoded pixels as they are)."""
    value = str(inference_defaults(path).get("blend", "paste"))
    if value not in BLENDS:
        raise InputError(f"{path}: inference.blend must be one of {', '.join(BLENDS)}, got {value!r}")
    return value


def preferred_resolution(path: Path) -> int | None:
    """The short side a model prefers to run at on frames larger than its training size: the config's
    `inference.resolution` (None: the training size)."""
    value = inference_defaults(path).get("resolution")
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise InputError(f"{path}: inference.resolution must be a positive whole number, got {value!r}")
    return value


def resolution_multiple(model_config: DictConfig) -> int:
    """What a working resolution must be a multiple of: the first stage's and the UNet's downsamplings."""
    first_stage = len(model_config.params.first_stage_config.params.ddconfig.ch_mult) - 1
    unet = len(model_config.params.unet_config.params.channel_mult) - 1
    return 2 ** (first_stage + unet)


@dataclass(frozen=True)
class WorkingResolution:
    """For frames of (height, width): the short side the model runs at. `requested` (--resolution) as
    given; else `preferred` (the config's `inference.resolution`), but never above the frames' own short
    side (rounded down to a multiple of `multiple`) nor below `trained`, the training size; else `trained`."""

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


def working_resolution(requested: int | None, config: Path, trained: int) -> WorkingResolution:
    """The model's WorkingResolution; a `requested` size must be a multiple of resolution_multiple."""
    multiple = resolution_multiple(read_model_config(config))
    if requested is not None and requested % multiple:
        raise InputError(f"--resolution {requested}: this model needs a multiple of {multiple}")
    return WorkingResolution(trained, preferred_resolution(config), requested, multiple)


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


# ------------------------------------------------------------------------------ device and dtype


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
    """Whether `device` is a CPU without AMX or AVX512-BF16, where bf16 is emulated (a matmul about
    80x slower than fp32 on an AVX2 CPU)."""
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
            "than fp32 (about 80x for a matmul on AVX2); --dtype auto picks fp32 here"
        )
    return DTYPES[name]


def precision(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Autocast to `dtype` on `device` (a no-op for float32)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


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


# --------------------------------------------------------------------------------------- loading


INFERENCE_CLASSES = {
    "ldm.models.diffusion.latent_diffusion.LatentDiffusion": "ldm.models.diffusion.core.LatentDiffusionModel",
    "ldm.models.autoencoder.VQModelInterface": "ldm.models.first_stage.VQFirstStage",
}
"""Lightning training modules → the modules they train, which hold the same weights and import no
Lightning (it takes seconds to import). Other targets are built as they are."""


def init_parameter_names(cls: type) -> set[str]:
    """Keyword parameters `cls(...)` takes, following `**kwargs` up its base classes."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = inspect.signature(klass.__init__).parameters.values()
        names |= {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            break
    return names - {"self"}


def _for_inference(node: Any) -> Any:
    """A config (sub)tree with each training module swapped for its inference class, keeping only the
    params that class takes (the rest, such as learning rates, EMA and loss settings, and the
    `ckpt_path`s, only matter to training: the checkpoint supplies the weights)."""
    if isinstance(node, list):
        return [_for_inference(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _for_inference(value) for key, value in node.items()}
    if node.get("target") in INFERENCE_CLASSES:
        node["target"] = INFERENCE_CLASSES[node["target"]]
        taken = init_parameter_names(get_obj_from_str(node["target"]))
        node["params"] = {k: v for k, v in (node.get("params") or {}).items() if k in taken}
    return node


def inference_config(model_config: Mapping) -> dict:
    """The model config that inference builds: Lightning-free classes, no weight-file references."""
    cfg = _for_inference(OmegaConf.to_container(OmegaConf.create(model_config), resolve=True))
    params = cfg.setdefault("params", {})
    if cfg.get("target") not in INFERENCE_CLASSES.values():
        params["use_ema"] = False  # another Lightning module: its EMA becomes the weights at load
    params.pop("ckpt_path", None)
    params.get("first_stage_config", {}).get("params", {}).pop("ckpt_path", None)
    return cfg


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
