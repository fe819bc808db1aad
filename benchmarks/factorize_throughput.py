#!/usr/bin/env python
"""Factorisation throughput end to end: a synthetic egocentric clip (a held-out scene, a moving
camera, hands) encoded as H.264, its hand masks as PNGs, through ldm.inference.factorize as
scripts/factorize.py runs it: decoding, sampling, blending, writing every layer, assembling the
videos. Frames per second of the streaming phase (from the run summary) and of the whole call,
loading the model included; with the embedded small model or random weights of a config."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import ROOT, worker_main  # noqa: E402
from benchmarks.sampling import random_model  # noqa: E402
from ldm.data.synthetic.scenes import to_uint8_canvas  # noqa: E402
from ldm.data.synthetic.sequences import make_sequence  # noqa: E402
from ldm.inference.device import resolve_dtype  # noqa: E402
from ldm.inference.factorize import FactorizeOptions, factorize  # noqa: E402
from ldm.inference.jobs import FactorizeJob  # noqa: E402
from ldm.inference.model import ModelChoice  # noqa: E402
from ldm.inference.settings import InferenceSettings  # noqa: E402
from ldm.inference.video import write_mp4  # noqa: E402

CLIP_SEED = 20_000_000
"""The clip is drawn from a seed no training run or evaluation uses."""


def write_clip(folder: Path, frames: int, size: int) -> tuple[Path, Path]:
    """(video.mp4, masks/): a held-out synthetic clip with hands and their masks."""
    sequence = make_sequence(CLIP_SEED, size, frames, split="heldout")
    video = folder / "clip.mp4"
    write_mp4(iter(to_uint8_canvas(sequence.with_hands)), video, fps=30.0)
    masks = folder / "masks"
    masks.mkdir()
    for index, mask in enumerate(sequence.masks):
        Image.fromarray(mask.astype(np.uint8) * 255).save(masks / f"{index:05d}.png")
    return video, masks


def random_checkpoint(config: str, folder: Path) -> Path:
    """Seeded random weights of the config's model, as a weights file (float16)."""
    model = random_model(config)
    path = folder / "random.safetensors"
    save_file({k: v.half().contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def measure(
    config: str, checkpoint: str | None, steps: int, frames: int, size: int, device: str, dtype: str
) -> dict:
    dev = torch.device(device)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        weights = ROOT / checkpoint if checkpoint else random_checkpoint(config, work)
        video, masks = write_clip(work, frames, size)
        job = FactorizeJob.open(video, masks, work / "out")
        settings = InferenceSettings.from_config(ROOT / config).overridden(ddim_steps=steps)
        options = FactorizeOptions(device=dev, settings=settings, dtype=resolve_dtype(dtype, dev))
        start = time.perf_counter()
        summary = factorize([job], ModelChoice(ROOT / config, weights, "benchmark"), options)
        seconds = time.perf_counter() - start
    (process,) = summary.processes
    return {
        "config": config,
        "weights": checkpoint or "random",
        "device": device,
        "dtype": str(options.dtype).removeprefix("torch."),
        "steps": steps,
        "frames": frames,
        "size": size,
        "streaming_frames_per_s": process.frames_per_second,
        "call_seconds": seconds,
        "call_frames_per_s": frames / seconds,
    }


if __name__ == "__main__":
    sys.exit(worker_main(measure))
