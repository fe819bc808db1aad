#!/usr/bin/env python
"""VIDM demo: remove the hands from 4 frames, each inpainted with the other three as context.

Reads TARGET/raw/*.jpg and TARGET/masks/*.png (paired in sorted order; masks 0/255, .jpg files in
masks/ are ignored) and writes one row per frame, input | mask | result, to output.png.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ldm.inference.cli import (
    add_model_arguments,
    add_sampling_arguments,
    device_and_dtype,
    run_command,
    sampling_settings,
    setup_logging,
)
from ldm.inference.demo import demo_grid, inpaint_demo, read_demo_folder
from ldm.inference.images import write_image_atomic
from ldm.inference.inpainter import Inpainter, seeded_generator
from ldm.inference.model import choose_model, load_model
from ldm.inference.settings import working_resolution

log = logging.getLogger("demo_script")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("target", type=Path, help="folder with raw/ and masks/ (e.g. demo_data)")
    parser.add_argument(
        "--dilation",
        type=int,
        default=7,
        help="dilate the masks with a square of this many pixels at 256x256 (default 7)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("output.png"), help="output image (default output.png)"
    )
    add_model_arguments(parser)
    add_sampling_arguments(parser)
    args = parser.parse_args(argv)
    if args.dilation < 0:
        parser.error("--dilation must be at least 0")
    if args.out.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        parser.error(f"--out {args.out}: use a .png or .jpg name")
    return args


def demo(args: argparse.Namespace) -> None:
    device, dtype = device_and_dtype(args)
    frames, masks = read_demo_folder(args.target, args.dilation)
    choice = choose_model(args.checkpoint, args.config)
    model, trained = load_model(choice, device, dtype, args.unsafe_load)
    settings = sampling_settings(args, choice.config)
    working = working_resolution(args.resolution, settings.resolution, choice.config)
    resolution = working(*frames.shape[1:3])
    inpainter = Inpainter(
        model,
        dtype,
        settings.ddim_steps,
        args.eta,
        settings.timestep_spacing,
        settings.align_context,
        tile=trained,
    )
    log.info(
        "sampling 4 frames at %dx%d%s on %s (%s), %d DDIM steps (%s)%s, %s into the masks",
        resolution,
        resolution,
        f" in overlapping {trained}-px tiles" if resolution > trained else "",
        device,
        str(dtype).removeprefix("torch."),
        settings.ddim_steps,
        settings.timestep_spacing,
        ", context frames aligned to each target" if settings.align_context else "",
        "Poisson-blended" if settings.blend == "poisson" else "pasted",
    )
    generator = seeded_generator(device, args.seed)
    results = inpaint_demo(frames, masks, inpainter, resolution, generator, settings.blend)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_image_atomic(args.out, demo_grid(frames, masks, results))
    log.info("wrote %s", args.out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    return run_command(lambda: demo(args))


if __name__ == "__main__":
    sys.exit(main())
