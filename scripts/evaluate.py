#!/usr/bin/env python
"""Evaluate hand inpainting where the true pixels are known (the paper's pasted-hand protocol).

Methods, in one run, on the same samples:
  vidm               the model, target frame + 3 context frames
  vidm_single_frame  the same model with the context frames replaced by copies of the masked target
  telea              OpenCV inpainting (Telea) of the target frame
  temporal_copy      each masked pixel from the latest context frame where it is visible, Telea for the rest
  aligned_copy       temporal_copy after warping the context frames onto the target's view (ECC fits)
  ldm_inpainting_big LDM's 2D inpainting model on the target frame (when its checkpoint is present)
  autoencoder_bound  the true target through the model's first stage: what predicting its latent exactly
                     would score, about the best a latent-diffusion model can do at this size

Metrics: PSNR and SSIM over the masked region and the whole frame; LPIPS and FID when their networks
are available locally. The model samples as the demo does: its config's DDIM steps and spacing, eta 1
(the published demo's), unless --steps, --spacing or --eta say otherwise. The model methods put their output into the mask as --blend says (the
model's default). Only target pixels whose truth is known count: --data visor draws hand-free
backgrounds only, and leaves out any own hands the annotations still give a target. Writes
OUT/results.json, OUT/results.md and OUT/grid.png.

With only --out it evaluates the embedded small model (or the released one when present) on the
held-out synthetic benchmark. --data folder --folder F scores real frames: F holds 4 frames and their
hand masks as demo_script.py reads them, and each frame gets a hole shaped like another frame's hand
(up to 12 samples at 256 px; the truth under a frame's own hand is unknown and never scored).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

from ldm.evaluation.baselines import telea, temporal_copy
from ldm.evaluation.metrics import PerceptualMetrics, frame_metrics
from ldm.evaluation.samples import EvalSample, demo_folder_samples, synthetic_samples, visor_samples
from ldm.inference.alignment import align_to_last
from ldm.inference.blending import paste_back
from ldm.inference.cli import (
    add_model_arguments,
    add_sampling_arguments,
    device_and_dtype,
    positive_int,
    run_command,
    sampling_settings,
    setup_logging,
)
from ldm.inference.images import (
    composite,
    scaled_dilation,
    to_model_scale,
    write_image_atomic,
)
from ldm.inference.inpainter import Inpainter, seeded_generator
from ldm.inference.model import REPO_ROOT, ModelChoice, choose_model, load_model
from ldm.inference.settings import InferenceSettings, WorkingResolution, working_resolution
from ldm.util import InputError

log = logging.getLogger("evaluate")

INPAINTING_BIG = ModelChoice(
    REPO_ROOT / "configs/ldm_inpainting_big.yaml",
    REPO_ROOT / "models/ldm/inpainting_big/last.ckpt",
    "LDM inpainting_big",
)
METRIC_COLUMNS = ("psnr_mask", "ssim_mask", "psnr", "ssim", "lpips", "fid")
Method = Callable[[list[EvalSample]], np.ndarray]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--data", choices=("synthetic", "visor", "folder"), default="synthetic")
    parser.add_argument("--n", type=positive_int, default=48, help="number of samples (default 48)")
    parser.add_argument(
        "--size", type=positive_int, help="evaluation size in pixels (default: the model's; folder: 256)"
    )
    parser.add_argument("--folder", type=Path, help="--data folder: frames and hand masks (raw/, masks/)")
    parser.add_argument("--dilation", type=int, default=7, help="mask dilation at 256 px (default 7)")
    parser.add_argument("--batch-size", type=positive_int, default=16)
    parser.add_argument(
        "--methods",
        nargs="+",
        help="subset of vidm vidm_single_frame telea temporal_copy aligned_copy autoencoder_bound "
        "ldm_inpainting_big",
    )
    visor = parser.add_argument_group("--data visor (NoHands validation windows)")
    visor.add_argument("--epic-root", default=os.environ.get("EPIC_ROOT"), help="default $EPIC_ROOT")
    visor.add_argument("--visor-root", default=os.environ.get("DATA_LOCATION"), help="default $DATA_LOCATION")
    visor.add_argument("--visor-files", default="data/no_hands_val.txt")
    add_model_arguments(parser)
    add_sampling_arguments(parser)
    return parser.parse_args(argv)


def chunked_method(
    batch_size: int, desc: str, predict: Callable[[list[EvalSample], int], np.ndarray], blend: str
) -> Method:
    """A method that fills `batch_size` samples at a time: `predict(chunk, start)` gives images at
    the model's scale, which are resized back and put into each target's mask (`blend`)."""

    def run(samples: list[EvalSample]) -> np.ndarray:
        results = []
        for start in tqdm(range(0, len(samples), batch_size), desc=desc, leave=False):
            chunk = samples[start : start + batch_size]
            frames, masks = np.stack([s.frames[-1] for s in chunk]), np.stack([s.masks[-1] for s in chunk])
            results.append(paste_back(frames, predict(chunk, start), masks, blend))
        return np.concatenate(results)

    return run


def model_method(
    inpainter: Inpainter, resolution: WorkingResolution, batch_size: int, seed: int, mode: str, blend: str
) -> Method:
    """A model as a method: `multi` (target + context), `single` (context = masked target) or `image` (2D model)."""

    def predict(chunk: list[EvalSample], start: int) -> np.ndarray:
        frames, masks = np.stack([s.frames for s in chunk]), np.stack([s.masks for s in chunk])
        if mode == "single":
            frames = np.repeat(frames[:, -1:], frames.shape[1], axis=1)
            masks = np.repeat(masks[:, -1:], masks.shape[1], axis=1)
        size = resolution(*frames.shape[2:4])
        scaled = [
            [to_model_scale(f, m, size) for f, m in zip(fs, ms, strict=True)]
            for fs, ms in zip(frames, masks, strict=True)
        ]
        model_frames = np.stack([[f for f, _ in seq] for seq in scaled])
        model_masks = np.stack([[m for _, m in seq] for seq in scaled])
        if mode == "image":
            model_frames, model_masks = model_frames[:, -1], model_masks[:, -1]
        # One generator per sample, seeded from its number: scores do not depend on --batch-size.
        generators = [seeded_generator(inpainter.device, seed, start + i) for i in range(len(chunk))]
        return inpainter(model_frames, model_masks, generators)

    return chunked_method(batch_size, mode, predict, blend)


def autoencoder_method(
    inpainter: Inpainter, resolution: WorkingResolution, batch_size: int, blend: str
) -> Method:
    """The ground truth through the first stage, resized back and put in like the model's output."""

    def predict(chunk: list[EvalSample], start: int) -> np.ndarray:
        size = resolution(*chunk[0].target.shape[:2])
        return inpainter.autoencode(np.stack([to_model_scale(s.target, s.masks[-1], size)[0] for s in chunk]))

    return chunked_method(batch_size, "autoencoder", predict, blend)


def per_sample_method(fill: Callable[[EvalSample], np.ndarray]) -> Method:
    return lambda samples: np.stack([composite(s.frames[-1], fill(s), s.masks[-1]) for s in samples])


def build_methods(
    args: argparse.Namespace, choice: ModelChoice, settings: InferenceSettings
) -> tuple[dict[str, Method], int, str, WorkingResolution]:
    """The methods to run, the evaluation size, a description of the model and the size it runs at."""
    device, dtype = device_and_dtype(args)
    model, trained = load_model(choice, device, dtype, args.unsafe_load)
    inpainter = Inpainter(
        model,
        dtype,
        settings.ddim_steps,
        args.eta,
        settings.timestep_spacing,
        settings.align_context,
        tile=trained,
    )
    resolution = working_resolution(args.resolution, settings.resolution, choice.config)
    blend = settings.blend
    methods: dict[str, Method] = {
        "vidm": model_method(inpainter, resolution, args.batch_size, args.seed, "multi", blend),
        "vidm_single_frame": model_method(inpainter, resolution, args.batch_size, args.seed, "single", blend),
        "telea": per_sample_method(lambda s: telea(s.frames[-1], s.masks[-1])),
        "temporal_copy": per_sample_method(lambda s: temporal_copy(s.frames, s.masks)),
        "aligned_copy": per_sample_method(lambda s: temporal_copy(*align_to_last(s.frames, s.masks))),
        "autoencoder_bound": autoencoder_method(inpainter, resolution, args.batch_size, blend),
    }
    if INPAINTING_BIG.checkpoint.is_file():
        big, big_resolution = load_model(INPAINTING_BIG, device, dtype, args.unsafe_load)
        big_settings = sampling_settings(args, INPAINTING_BIG.config)
        big_inpainter = Inpainter(
            big, dtype, big_settings.ddim_steps, args.eta, big_settings.timestep_spacing
        )
        methods["ldm_inpainting_big"] = model_method(
            big_inpainter,
            WorkingResolution(big_resolution),
            args.batch_size,
            args.seed,
            "image",
            big_settings.blend,
        )
    else:
        log.info("ldm_inpainting_big skipped: %s not found", INPAINTING_BIG.checkpoint)
    if args.methods:
        unknown = sorted(set(args.methods) - set(methods))
        if unknown:
            raise InputError(
                f"--methods: {', '.join(unknown)} not available (choose from {', '.join(methods)})"
            )
        methods = {name: methods[name] for name in args.methods}
    return methods, args.size or trained, choice.description, resolution


def load_samples(args: argparse.Namespace, size: int) -> list[EvalSample]:
    if args.data == "folder":
        return list(demo_folder_samples(args.folder, args.dilation))
    dilation = scaled_dilation(args.dilation, size)
    if args.data == "synthetic":
        return list(synthetic_samples(args.n, size, dilation, seed=args.seed))
    if not args.epic_root or not args.visor_root:
        raise InputError("--data visor needs --epic-root/--visor-root (or EPIC_ROOT and DATA_LOCATION)")
    params = {
        "epic_hdf5_root": args.epic_root,
        "data_root": args.visor_root,
        "visor_files": args.visor_files,
        "size": size,
        "mask_size": (size // 4, size // 4),
        "mask_dilation": dilation | 1,  # NoHands, as the published dataset, dilates by an odd square
    }
    try:
        return list(visor_samples(args.n, params, seed=args.seed))
    except (OSError, ValueError) as err:
        raise InputError(f"--data visor: {err}") from None


def score(samples: list[EvalSample], predictions: np.ndarray) -> dict[str, float | str]:
    """Mean metrics over the samples, counting only target pixels whose truth is known."""
    per_sample = [
        frame_metrics(p, s.target, s.masks[-1], s.known) for p, s in zip(predictions, samples, strict=True)
    ]
    means: dict[str, float | str] = {k: float(np.mean([m[k] for m in per_sample])) for k in per_sample[0]}
    perceptual = PerceptualMetrics()
    for p, s in zip(predictions, samples, strict=True):
        unknown_as_truth = p if s.known is None else np.where(s.known[..., None], p, s.target)
        perceptual.update(unknown_as_truth, s.target)
    return means | perceptual.compute()


def results_table(results: dict[str, dict[str, float | str]]) -> str:
    def cell(value: float | str) -> str:
        if isinstance(value, str):
            return "n/a"
        return "inf" if math.isinf(value) else f"{value:.4f}" if abs(value) < 2 else f"{value:.2f}"

    lines = ["| method | " + " | ".join(METRIC_COLUMNS) + " |", "|---" * (len(METRIC_COLUMNS) + 1) + "|"]
    lines += [
        f"| {name} | " + " | ".join(cell(m[c]) for c in METRIC_COLUMNS) + " |" for name, m in results.items()
    ]
    return "\n".join(lines) + "\n"


def grid(samples: list[EvalSample], predictions: dict[str, np.ndarray], rows: int = 4) -> np.ndarray:
    """Per sample: input frames | mask | each method | ground truth, under a header of names."""
    size = samples[0].target.shape[0]
    names = ["inputs"] + [""] * (len(samples[0].frames) - 1) + ["mask", *predictions, "ground truth"]
    header = np.full((20, size * len(names), 3), 255, np.uint8)
    for i, name in enumerate(names):
        cv2.putText(
            header, name[:14], (i * size + 2, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1, cv2.LINE_AA
        )
    body = []
    for i, sample in enumerate(samples[:rows]):
        mask = np.repeat(sample.masks[-1][..., None], 3, axis=2).astype(np.uint8) * 255
        tiles = [*sample.frames, mask, *(p[i] for p in predictions.values()), sample.target]
        body.append(np.hstack(tiles))
    return np.vstack([header, *body])


def check_data_arguments(args: argparse.Namespace) -> None:
    """Refuse --data folder's bad combinations before any model loads."""
    if args.data == "folder" and args.folder is None:
        raise InputError("--data folder needs --folder (a folder with raw/ and masks/)")
    if args.data == "folder" and args.size:
        raise InputError("--size: --data folder evaluates at the frames' 256 px")


def evaluate(args: argparse.Namespace) -> None:
    check_data_arguments(args)
    choice = choose_model(args.checkpoint, args.config)
    settings = sampling_settings(args, choice.config)
    methods, size, model, resolution = build_methods(args, choice, settings)
    spacing, align_context, blend = settings.timestep_spacing, settings.align_context, settings.blend
    samples = load_samples(args, size)
    if not samples:
        raise InputError("no evaluation samples")
    size = samples[0].target.shape[0]
    model_size = resolution(*samples[0].target.shape[:2])
    log.info(
        "evaluating %s on %d %s samples at %d px (the model at %d px)",
        model,
        len(samples),
        args.data,
        size,
        model_size,
    )
    predictions, results = {}, {}
    with torch.inference_mode():
        for name, method in methods.items():
            predictions[name] = method(samples)
            results[name] = score(samples, predictions[name])
            log.info(
                "%s: psnr_mask %.2f ssim_mask %.4f",
                name,
                results[name]["psnr_mask"],
                results[name]["ssim_mask"],
            )
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "n": len(samples),
        "methods": results,
        "settings": {
            "data": args.data,
            "size": size,
            "model": model,
            "model_resolution": model_size,
            "steps": settings.ddim_steps,
            "spacing": spacing,
            "eta": args.eta,
            "seed": args.seed,
            "align_context": align_context,
            "blend": blend,
        },
    }
    tmp = args.out / "results.json.partial"
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(args.out / "results.json")
    table = results_table(results)
    (args.out / "results.md.partial").write_text(
        f"{len(samples)} {args.data} samples at {size} px; {model} at {model_size} px; DDIM {settings.ddim_steps} steps ({spacing}), eta {args.eta}{' (context aligned)' if align_context else ''}, {blend}\n\n{table}"
    )
    (args.out / "results.md.partial").replace(args.out / "results.md")
    write_image_atomic(args.out / "grid.png", grid(samples, predictions))
    print(table, end="")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    return run_command(lambda: evaluate(args))


if __name__ == "__main__":
    sys.exit(main())
