#!/usr/bin/env python
"""The published implementation's UNet forward, from a checkout of its repository
(github.com/MatthewChang/agent_inpainting), on the same config, inputs and device as unet.py: the
baseline this project's speed is compared with, measured in the same run.

Its package is also called `ldm`, so this runs in a process of its own that imports `ldm` from the
checkout. It has no bf16 path of its own: bf16 runs its float32 weights under autocast.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import (  # noqa: E402
    ROOT,
    flop_counter,
    forward_row,
    random_weights,
    timed,
    unet_inputs,
    worker_main,
)

UNET_FILE = Path("ldm/modules/diffusionmodules/openaimodel.py")
"""Where a checkout of the published repository keeps its UNet."""


def published_unet(checkout: Path, config: str) -> torch.nn.Module:
    """The checkout's UNetModel built from `config`'s unet_config."""
    if not (checkout / UNET_FILE).is_file():
        raise SystemExit(f"{checkout}: not a checkout of the published repository (no {UNET_FILE})")
    # This repository's `ldm` is a regular package and would win over the checkout's (a namespace one).
    sys.path[:] = [str(checkout), *(p for p in sys.path if Path(p or ".").resolve() != ROOT)]
    module = importlib.import_module("ldm.modules.diffusionmodules.openaimodel")
    if not str(Path(module.__file__).resolve()).startswith(str(checkout.resolve())):
        raise SystemExit(f"imported {module.__file__}, not the checkout's openaimodel.py")
    params = OmegaConf.to_container(OmegaConf.load(ROOT / config).model.params.unet_config.params)
    return module.UNetModel(**params)


def measure(published: str, config: str, batch: int, device: str, dtype: str, repeats: int) -> dict:
    dev = torch.device(device)
    torch.manual_seed(0)
    unet = random_weights(published_unet(Path(published), config)).eval().to(dev)
    x, t = unet_inputs(config, batch, dev)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()
    with torch.no_grad(), autocast:
        with flop_counter() as counter:
            unet(x, t)
        seconds = timed(lambda: unet(x, t), repeats, dev)
    return forward_row("published", config, batch, device, dtype, seconds, counter.get_total_flops())


if __name__ == "__main__":
    sys.exit(worker_main(measure))
