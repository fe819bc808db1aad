"""What the inference commands share: model and sampling options, logging, and one-line errors."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from ldm.checkpoint import CheckpointError
from ldm.inference.blending import BLENDS
from ldm.inference.device import DTYPE_CHOICES, resolve_device, resolve_dtype
from ldm.inference.model import OFFICIAL_CONFIG, OFFICIAL_WEIGHTS, SMALL_WEIGHTS
from ldm.inference.settings import InferenceSettings
from ldm.models.diffusion.ddim import SPACINGS
from ldm.util import InputError, first_line


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--checkpoint",
        type=Path,
        help=f"weights (.ckpt or .safetensors); default {OFFICIAL_WEIGHTS} if present, else the embedded "
        f"small model {SMALL_WEIGHTS} (both relative to the repository)",
    )
    group.add_argument("--config", type=Path, help=f"config of --checkpoint (default {OFFICIAL_CONFIG})")
    group.add_argument(
        "--unsafe-load",
        action="store_true",
        help="allow pickled objects in the checkpoint (trusted files only)",
    )


def add_sampling_arguments(
    parser: argparse.ArgumentParser, steps: int | None = None, eta: float = 1.0
) -> None:
    """--device, --dtype, --steps, --spacing, --eta, --seed, --align-context, --blend; `steps` None: the
    model's default (see `sampling_steps`)."""
    group = parser.add_argument_group("sampling")
    group.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)")
    group.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default="auto",
        help="precision: auto (default) is bf16 where the hardware computes it natively (CUDA sm80+, "
        "a CPU with AMX or AVX512-BF16), else fp32; fp16 needs a GPU",
    )
    steps_help = f"(default {steps})" if steps else "(default: the model's, 200 for the released one)"
    group.add_argument("--steps", type=positive_int, default=steps, help=f"DDIM steps {steps_help}")
    group.add_argument(
        "--spacing",
        choices=SPACINGS,
        help="DDIM timesteps for S steps of a T-step schedule: leading (LDM's, starts at t = T - T/S + 1) "
        "or trailing (starts at t = T - 1) (default: the model's, leading for the released one)",
    )
    group.add_argument("--eta", type=non_negative_float, default=eta, help=f"DDIM eta (default {eta})")
    group.add_argument("--seed", type=int, default=0, help="random seed; same seed, same result (default 0)")
    group.add_argument(
        "--align-context",
        action=argparse.BooleanOptionalAction,
        help="warp each context frame onto the target's view (ECC fits: affine, rigid or rotation-and-zoom) before sampling "
        "(default: the model's, off for the released one)",
    )
    group.add_argument(
        "--resolution",
        type=positive_int,
        help="short side, in pixels, that the frames are resized to for the model (default: the model's "
        "inference.resolution, at most the frames' own; else its training size, 256 for the released one)",
    )
    group.add_argument(
        "--blend",
        choices=BLENDS,
        help="how the result goes into each frame's mask: paste its pixels, or Poisson-blend it (its "
        "gradients inside, the frame's pixels on the mask's edge) (default: the model's, paste for the "
        "released one)",
    )


def sampling_settings(args: argparse.Namespace, config: Path) -> InferenceSettings:
    """The model config's inference settings, with the sampling options given on the command line in
    their place (--resolution is kept apart: it is not capped by the frames' size, see WorkingResolution)."""
    return InferenceSettings.from_config(config).overridden(
        ddim_steps=args.steps,
        timestep_spacing=args.spacing,
        align_context=args.align_context,
        blend=args.blend,
    )


def device_and_dtype(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    device = resolve_device(args.device)
    return device, resolve_dtype(args.dtype, device)


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")


def run_command(command: Callable[[], None]) -> int:
    """Run a command; bad input, bad checkpoints and file-system errors end it with one 'error: ...' line
    and status 1."""
    try:
        command()
    except (InputError, CheckpointError) as err:
        message = " ".join(str(err).split("\n"))
        print(f"error: {message}", file=sys.stderr)
        return 1
    except OSError as err:  # e.g. an output folder that cannot be written
        print(f"error: {first_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
