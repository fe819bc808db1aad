#!/usr/bin/env python
"""The demo workload: 4 targets, each with 3 context frames, sampled with DDIM (eta 1) and decoded at
the model's size; seconds per frame, with the embedded small model or random weights of a config."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import ROOT, random_weights, timed, worker_main  # noqa: E402
from ldm.inference.device import DTYPES  # noqa: E402
from ldm.inference.inpainter import Inpainter, seeded_generator  # noqa: E402
from ldm.inference.model import ModelChoice, load_model, prepare_for_inference  # noqa: E402
from ldm.inference.model_config import inference_config  # noqa: E402
from ldm.inference.settings import model_resolution, read_model_config  # noqa: E402
from ldm.util import instantiate_from_config  # noqa: E402


def model_for(config: str, checkpoint: str | None, device: torch.device, dtype: torch.dtype):
    """(model, pixel size): the checkpoint's weights, or seeded random ones."""
    if checkpoint:
        return load_model(ModelChoice(ROOT / config, ROOT / checkpoint, checkpoint), device, dtype)
    model = prepare_for_inference(random_model(config), device, dtype)
    return model, model_resolution(read_model_config(ROOT / config))


def random_model(config: str) -> torch.nn.Module:
    """The config's inference model with seeded random weights (random_weights), on the CPU."""
    torch.manual_seed(0)
    return random_weights(instantiate_from_config(inference_config(read_model_config(ROOT / config))))


def measure(config: str, checkpoint: str | None, device: str, dtype: str, steps: int) -> dict:
    dev, torch_dtype = torch.device(device), DTYPES[dtype]
    model, size = model_for(config, checkpoint, dev, torch_dtype)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (4, 4, size, size, 3), dtype=np.uint8)
    masks = np.zeros((4, 4, size, size), bool)
    masks[:, :, size // 3 :, size // 4 : size // 2] = True
    Inpainter(model, torch_dtype, steps=1)(frames, masks)  # warm-up
    inpainter = Inpainter(model, torch_dtype, steps=steps, eta=1.0)
    seconds = timed(lambda: inpainter(frames, masks, seeded_generator(dev, 0)), 1, dev)[0]
    return {
        "config": config,
        "weights": checkpoint or "random",
        "device": device,
        "dtype": dtype,
        "steps": steps,
        "size": size,
        "seconds": seconds,
        "seconds_per_frame": seconds / 4,
    }


if __name__ == "__main__":
    sys.exit(worker_main(measure))
