#!/usr/bin/env python
"""Convert a VIDM Lightning checkpoint to a small safetensors file for inference.

Keeps the EMA weights of the denoiser (under the denoiser's own names) and the first stage; drops
the training weights, optimizer state and the conditioner's duplicate of the first stage. The input
may also be such a weights file, e.g. to install a first-stage decoder fine-tuned alone
(--decoder-from, as scripts/train_small.py's decoder phase trains it).
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
    SCALE_FACTOR_KEY,
    CheckpointError,
    ema_as_model_weights,
    first_stage_state,
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


FIXED_KEYS = ("encoder.", "quant_conv.", "quantize.")
"""First-stage tensors that make the latents; the rest (decoder, post_quant_conv) decode them."""


def with_decoder(
    tensors: dict[str, torch.Tensor], first_stage: dict[str, torch.Tensor], source: Path
) -> dict[str, torch.Tensor]:
    """`tensors` with their first stage's decoder taken from `first_stage`, a decoder-only fine-tune
    of the same first stage: its encoder and codebook must be the model's (the latents the denoiser
    learned), within float16 rounding."""
    out = dict(tensors)
    for name, current in tensors.items():
        if not name.startswith(FIRST_STAGE_PREFIX):
            continue
        key = name[len(FIRST_STAGE_PREFIX) :]
        value = first_stage.get(key)
        if value is None or value.shape != current.shape:
            raise CheckpointError(
                f"{source}: first stage tensor '{key}' is missing or does not fit the model's"
            )
        if not key.startswith(FIXED_KEYS):
            out[name] = value.to(current.dtype)
        elif not torch.allclose(value.float(), current.float(), rtol=1e-3, atol=1e-5):
            raise CheckpointError(
                f"{source}: its '{key}' differs from the model's: only a decoder fine-tuned on the same "
                "encoder and codebook can be installed"
            )
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
        "--decoder-from",
        type=Path,
        metavar="VQ_CKPT",
        help="take the first stage's decoder from this checkpoint, a decoder-only fine-tune of the "
        "model's first stage (model.params.train_decoder_only in configs/vq_f4_small.yaml)",
    )
    parser.add_argument(
        "--scale-factor",
        type=float,
        help="record the latent scale factor the model was trained with (main.py's "
        "model.params.scale_factor); loading the file then uses it instead of the config's",
    )
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
    if args.decoder_from is not None:
        try:
            first_stage = first_stage_state(args.decoder_from, unsafe=args.unsafe_load)
            tensors = with_decoder(tensors, first_stage, args.decoder_from)
        except CheckpointError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    dtype = torch.float16 if args.fp16 else None
    tensors = {
        k: (v.to(dtype) if dtype and v.is_floating_point() else v).contiguous() for k, v in tensors.items()
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_name(args.output.name + ".partial")
    metadata = {"format": "vidm-ema-inference", "source": args.checkpoint.name}
    if args.scale_factor is not None:
        metadata[SCALE_FACTOR_KEY] = repr(args.scale_factor)
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(args.output)
    size = sum(v.numel() * v.element_size() for v in tensors.values())
    log.info("wrote %s: %d tensors, %.1f MB", args.output, len(tensors), size / 1e6)
    return 0


if __name__ == "__main__":
    sys.exit(main())
