#!/usr/bin/env python
"""Training throughput: is a step bound by data loading or by compute, and what does the official
model cost on a GPU?

1. Data vs compute (always): the tiny config's training steps/s at batch size 2 in Lightning's loop
   on an in-memory batch (compute only) on this CPU, against the samples/s one loading process
   delivers from the NoHands training split. Data comes from EPIC_ROOT/DATA_LOCATION/EGO4D_LOCATION
   when they are set, else from the miniature fixture data (ldm/data/fixture_data.py), built in
   a temporary folder.
2. Batch sweep (when CUDA is available, or with --sweep-device): the official config's step time
   and peak GPU memory at batch 1, 2, 4, 8 per GPU, on random inputs of the real shapes (weights
   and input values do not change the cost).

    python scripts/benchmark_training.py
    python scripts/benchmark_training.py --precision bf16-mixed --batch-sizes 1 2 4 8 16
    python scripts/benchmark_training.py --sweep-device cpu --sweep-config configs/inpaint_4frame_tiny.yaml
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset, default_collate

from ldm.data.fixture_data import prepare_fixture_data
from ldm.util import instantiate_from_config

ROOT = Path(__file__).resolve().parents[1]
DATA_VARIABLES = ("EPIC_ROOT", "DATA_LOCATION", "EGO4D_LOCATION")


class StepTimer(pl.Callback):
    """Wall time of every training batch (optimizer step and EMA update included)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: list[float] = []

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._sync()
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._sync()
        self.seconds.append(time.perf_counter() - self._start)


def time_training(
    model: pl.LightningModule, batch: dict, steps: int, warmup: int, device: torch.device, precision: str
) -> list[float]:
    """Seconds per step after `warmup` steps, in Lightning's loop, on one batch kept in memory."""
    model.learning_rate = 1e-5
    timer = StepTimer(device)
    trainer = pl.Trainer(
        accelerator=device.type,
        devices=[device.index or 0] if device.type == "cuda" else 1,
        precision=precision,
        max_steps=warmup + steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(model, DataLoader([batch] * (warmup + steps), batch_size=None))
    return timer.seconds[warmup:]


def time_loading(dataset: Dataset, samples: int) -> float:
    """Samples per second that one process reads and builds from `dataset`."""
    dataset[0]  # open files and warm caches outside the timing
    start = time.perf_counter()
    for index in range(samples):
        dataset[(index * 7919) % len(dataset)]
    return samples / (time.perf_counter() - start)


def training_split(config_path: Path, workdir: Path) -> Dataset:
    """The config's training dataset, on the fixture data unless the data variables are set."""
    config = OmegaConf.load(config_path)
    if not all(os.environ.get(name) for name in DATA_VARIABLES):
        print(
            f"data: {', '.join(DATA_VARIABLES)} not all set; building the miniature fixture data in {workdir}"
        )
        env = prepare_fixture_data(workdir)
        os.environ.update({name: env[name] for name in DATA_VARIABLES})
        config.data.params.train.params.visor_files = env["VISOR_TRAIN_LIST"]
    return instantiate_from_config(config.data.params.train)


def data_vs_compute(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as workdir:
        dataset = training_split(args.config, Path(workdir))
        samples_per_s = time_loading(dataset, args.samples)
        batch = default_collate([dataset[i] for i in range(args.batch_size)])
    print(
        f"data: {type(dataset).__name__} training split, {len(dataset)} items, one process: "
        f"{samples_per_s:.1f} samples/s ({1000 / samples_per_s:.1f} ms/sample)"
    )

    model = instantiate_from_config(OmegaConf.load(args.config).model)
    seconds = time_training(model, batch, args.steps, args.warmup, torch.device("cpu"), "32-true")
    step = statistics.median(seconds)
    print(
        f"training: {args.config.name}, batch {args.batch_size}, CPU with {torch.get_num_threads()} threads: "
        f"{1 / step:.2f} steps/s (median {step:.3f} s/step, min {min(seconds):.3f} s over {len(seconds)} steps) "
        f"= {args.batch_size / step:.1f} samples/s"
    )
    needed = args.batch_size / step
    bound = "compute" if samples_per_s > needed else "data loading"
    print(
        f"bound by {bound}: one loading process supplies {samples_per_s / needed:.1f}x what training consumes"
    )


def random_batch(config: DictConfig, batch_size: int) -> dict[str, torch.Tensor]:
    """Inputs of the shapes the config's training data has, with random values."""
    params = config.data.params.train.params
    size, frames = int(params.size), int(params.num_frames)
    return {
        "image": torch.rand(batch_size, size, size, 3) * 2 - 1,
        "hand_images": torch.rand(batch_size, frames, size, size, 3) * 2 - 1,
        "mask": torch.randint(0, 2, (batch_size, frames, size, size)).float() * 2 - 1,
        "loss_mask": torch.ones(batch_size, *params.mask_size, dtype=torch.bool),
    }


def peak_memory(device: torch.device) -> str:
    """', peak N GiB' of GPU memory since the last reset; nothing on the CPU."""
    if device.type != "cuda":
        return ""
    return f", peak {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB"


def batch_sweep(args: argparse.Namespace, device: torch.device) -> None:
    config = OmegaConf.load(args.sweep_config)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"sweep: {args.sweep_config.name} on {name}, precision {args.precision}")
    for batch_size in args.batch_sizes:
        model = instantiate_from_config(config.model)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            seconds = time_training(
                model, random_batch(config, batch_size), args.steps, args.warmup, device, args.precision
            )
        except torch.cuda.OutOfMemoryError:
            print(f"batch {batch_size}: out of memory")
            break
        step = statistics.median(seconds)
        print(
            f"batch {batch_size}: {step:.3f} s/step ({batch_size / step:.1f} samples/s){peak_memory(device)}"
        )
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    configs = ROOT / "configs"
    parser.add_argument(
        "--config", type=Path, default=configs / "inpaint_4frame_tiny.yaml", help="data vs compute config"
    )
    parser.add_argument("--batch-size", type=int, default=2, help="data vs compute batch size (default: 2)")
    parser.add_argument("--samples", type=int, default=50, help="samples read for data timing (default: 50)")
    parser.add_argument(
        "--sweep-config", type=Path, default=configs / "inpaint_4frame.yaml", help="batch sweep config"
    )
    parser.add_argument(
        "--sweep-device", help="batch sweep device (default: cuda when available, else no sweep)"
    )
    parser.add_argument(
        "--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8], help="batch sweep batch sizes"
    )
    parser.add_argument("--precision", default="32-true", help="batch sweep precision, e.g. bf16-mixed")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (default: 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default: 2)")
    args = parser.parse_args(argv)
    for path in (args.config, args.sweep_config):
        if not path.is_file():
            print(f"error: {path}: no such config file", file=sys.stderr)
            return 1
    pl.seed_everything(0, verbose=False)
    data_vs_compute(args)
    sweep_device = args.sweep_device or ("cuda" if torch.cuda.is_available() else None)
    if sweep_device is None:
        print("sweep: skipped (no CUDA here; --sweep-device cpu runs it on the CPU)")
    else:
        batch_sweep(args, torch.device(sweep_device))
    return 0


if __name__ == "__main__":
    sys.exit(main())
