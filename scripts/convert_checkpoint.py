#!/usr/bin/env python
"""Convert a VIDM Lightning checkpoint to a small safetensors file for inference.

Keeps the EMA weights of the denoiser (under the denoiser's own names) and the first stage; drops
the training weights, optimizer state and the conditioner's duplicate of the first stage. The input
may also be such a weights file, e.g. to install a first-stage decoder fine-tuned alone
(--decoder-from, as scripts/train_small.py's decoder phase trains it). The latent scale factor the
input records (a weights file's metadata, or a checkpoint of main.py's training) is recorded again,
so that loading the output samples as the model was trained.
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
    Weights,
    ema_as_model_weights,
    first_stage_state,
    read_weights,
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


RESERVED_KEYS = ("format", "source", SCALE_FACTOR_KEY)
"""Metadata this script writes itself."""

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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
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
        help="record this latent scale factor instead of the one the input records (main.py's "
        "model.params.scale_factor; for weights that record none); loading the file then uses it "
        "instead of the config's",
    )
    parser.add_argument(
        "--metadata",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="also record this text in the file's metadata (repeatable)",
    )
    parser.add_argument(
        "--unsafe-load", action="store_true", help="allow pickled objects (trusted files only)"
    )
    args = parser.parse_args(argv)
    if args.output.suffix != ".safetensors":
        parser.error(f"{args.output}: output name must end in .safetensors")
    if args.scale_factor is not None and not args.scale_factor > 0:
        parser.error(f"--scale-factor {args.scale_factor}: must be a positive number")
    args.metadata = dict(item.partition("=")[::2] for item in args.metadata)
    if any(not key or key in RESERVED_KEYS for key in args.metadata):
        parser.error(f"--metadata: give KEY=VALUE, with a key other than {', '.join(RESERVED_KEYS)}")
    return args


def output_metadata(args: argparse.Namespace, weights: Weights) -> dict[str, str]:
    """The output's metadata: what the input records (its scale factor, a weights file's other
    entries), then what the command line adds or replaces."""
    metadata = {k: v for k, v in weights.metadata.items() if k not in RESERVED_KEYS}
    metadata.update({"format": "vidm-ema-inference", "source": args.checkpoint.name, **args.metadata})
    scale_factor = weights.scale_factor if args.scale_factor is None else args.scale_factor
    if scale_factor is not None:
        metadata[SCALE_FACTOR_KEY] = repr(scale_factor)
    return metadata


def converted(args: argparse.Namespace) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The output's tensors and metadata."""
    weights = read_weights(args.checkpoint, unsafe=args.unsafe_load)
    tensors = inference_tensors(weights.state)
    if args.decoder_from is not None:
        first_stage = first_stage_state(args.decoder_from, unsafe=args.unsafe_load)
        tensors = with_decoder(tensors, first_stage, args.decoder_from)
    dtype = torch.float16 if args.fp16 else None
    tensors = {
        k: (v.to(dtype) if dtype and v.is_floating_point() else v).contiguous() for k, v in tensors.items()
    }
    return tensors, output_metadata(args, weights)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        tensors, metadata = converted(args)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_name(args.output.name + ".partial")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(args.output)
    size = sum(v.numel() * v.element_size() for v in tensors.values())
    scale = metadata.get(SCALE_FACTOR_KEY, "none recorded")
    log.info(
        "wrote %s: %d tensors, %.1f MB, latent scale factor %s", args.output, len(tensors), size / 1e6, scale
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
