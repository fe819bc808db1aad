#!/usr/bin/env python
"""Convert a VIDM Lightning checkpoint to a small safetensors file for inference.

Keeps the EMA weights of the denoiser (under the denoiser's own names) and the first stage; drops
the training weights, optimizer state and the conditioner's duplicate of the first stage.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from ldm.checkpoint import (
    DENOISER_PREFIX,
    FIRST_STAGE_PREFIX,
    CheckpointError,
    ema_as_model_weights,
    read_state_dict,
)

log = logging.getLogger("convert_checkpoint")


def inference_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """EMA denoiser weights under `model.diffusion_model.*`, plus `first_stage_model.*`."""
    state = ema_as_model_weights(state)
    out = {k: v for k, v in state.items() if k.startswith((DENOISER_PREFIX, FIRST_STAGE_PREFIX))}
    if not any(k.startswith(DENOISER_PREFIX) for k in out) or not any(
        k.startswith(FIRST_STAGE_PREFIX) for k in out
    ):
        raise CheckpointError("checkpoint lacks model.diffusion_model.* or first_stage_model.* weights")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "checkpoint", type=Path, help="Lightning checkpoint (e.g. models/nohands_weights.ckpt)"
    )
    parser.add_argument("output", type=Path, help="output .safetensors file")
    parser.add_argument("--fp16", action="store_true", help="store float16 weights (half the size)")
    parser.add_argument(
        "--unsafe-load", action="store_true", help="allow pickled objects (trusted files only)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.output.suffix != ".safetensors":
        parser.error(f"{args.output}: output name must end in .safetensors")
    try:
        tensors = inference_tensors(read_state_dict(args.checkpoint, unsafe=args.unsafe_load))
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    dtype = torch.float16 if args.fp16 else None
    tensors = {
        k: (v.to(dtype) if dtype and v.is_floating_point() else v).contiguous() for k, v in tensors.items()
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_name(args.output.name + ".partial")
    save_file(tensors, str(tmp), metadata={"format": "vidm-ema-inference", "source": args.checkpoint.name})
    tmp.replace(args.output)
    size = sum(v.numel() * v.element_size() for v in tensors.values())
    log.info("wrote %s: %d tensors, %.1f MB", args.output, len(tensors), size / 1e6)
    return 0


if __name__ == "__main__":
    sys.exit(main())
