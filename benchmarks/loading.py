#!/usr/bin/env python
"""Loading a checkpoint in the released layout (training weights, EMA, optimizer state) for inference:
seconds, and peak RSS over the bytes of the weights kept. `make` writes such a checkpoint first."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import ROOT, peak_rss_gib, rss_gib, worker_main  # noqa: E402
from ldm.inference.model import ModelChoice, load_model  # noqa: E402
from ldm.util import instantiate_from_config  # noqa: E402


def make_checkpoint(config: str, path: str) -> dict:
    """A checkpoint of `config` in the released layout: state_dict (weights, EMA, schedule), AdamW
    state for every trainable parameter, and Lightning's bookkeeping."""
    model = instantiate_from_config(OmegaConf.load(ROOT / config).model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = {
        "state": {
            i: {"step": torch.tensor(1.0), "exp_avg": torch.randn_like(p), "exp_avg_sq": torch.rand_like(p)}
            for i, p in enumerate(params)
        },
        "param_groups": [{"lr": 1e-6, "params": list(range(len(params)))}],
    }
    torch.save(
        {
            "epoch": 0,
            "global_step": 1,
            "pytorch-lightning_version": "2.6.6",
            "state_dict": model.state_dict(),
            "optimizer_states": [optimizer],
            "lr_schedulers": [],
            "callbacks": {},
        },
        path,
    )
    return {"bytes": Path(path).stat().st_size}


def load(config: str, path: str) -> dict:
    """Load for inference (fp32, CPU), touch every kept weight, report peak RSS against their bytes."""
    baseline = rss_gib()
    start = time.perf_counter()
    model, _ = load_model(ModelChoice(ROOT / config, Path(path), "synthetic"), "cpu", torch.float32)
    seconds = time.perf_counter() - start
    tensors = {t.data_ptr(): t for t in [*model.parameters(), *model.buffers()]}
    kept = sum(t.numel() * t.element_size() for t in tensors.values()) / 2**30
    with torch.no_grad():
        checksum = sum(float(t.float().sum()) for t in tensors.values())
    return {
        "config": config,
        "seconds": seconds,
        "kept_gib": kept,
        "peak_over_baseline_gib": peak_rss_gib() - baseline,
        "ratio": (peak_rss_gib() - baseline) / kept,
        "checksum_finite": bool(np.isfinite(checksum)),
    }


def measure(step: str, config: str, path: str) -> dict:
    return make_checkpoint(config, path) if step == "make" else load(config, path)


if __name__ == "__main__":
    sys.exit(worker_main(measure))
