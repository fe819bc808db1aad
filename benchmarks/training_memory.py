#!/usr/bin/env python
"""Estimate the peak memory of one training step per GPU, without a GPU.

The model of a config, its optimizer and a batch are built as fake tensors (shapes and dtypes, no
data), one training step runs on them as Lightning would run it (forward under autocast for
bf16-mixed, backward, AdamW step, EMA update), and every tensor storage alive at the same time is
counted. The second step is the one measured: AdamW creates its state on the first.

What the count leaves out: the CUDA context (about 0.5 GB), cuDNN and cuBLAS workspaces, and the
caching allocator's rounding and fragmentation; a real run needs some more than the estimate.
Autocast follows the CPU's casting rules, which for the operations of this model (convolutions,
linear layers and attention in bf16, normalisation in float32) are CUDA's. DDP adds no copy of the
gradients: main.py keeps them in DDP's buckets.

    python benchmarks/training_memory.py --config configs/inpaint_4frame.yaml --batch-size 48
"""

from __future__ import annotations

import argparse
import json
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

from ldm.util import instantiate_from_config

GIB = 2**30
PRECISIONS = ("32", "bf16-mixed")


class LiveStorageBytes(TorchDispatchMode):
    """Counts the bytes of every tensor storage that an operation creates, until it is freed."""

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._seen = WeakIdKeyDictionary()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                self.count(tensor)
        return out

    def count(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        if storage in self._seen:
            return
        nbytes = storage.nbytes()
        self._seen[storage] = nbytes
        weakref.finalize(storage, self._free, nbytes)
        self.current += nbytes
        self.peak = max(self.peak, self.current)

    def _free(self, nbytes: int) -> None:
        self.current -= nbytes

    def reset_peak(self) -> None:
        self.peak = self.current


@dataclass(frozen=True)
class StepMemory:
    batch_size: int
    precision: str
    use_checkpoint: bool
    resident_gib: float
    """Weights, EMA and optimizer state: what stays between steps."""
    peak_gib: float
    """The most held at once during a step."""


def training_batch(
    batch_size: int, size: int, frames: int, latent: int, device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """A training batch of the shapes NoHands gives (channel-last images), uninitialised."""
    return {
        "image": torch.empty(batch_size, size, size, 3, device=device),
        "hand_images": torch.empty(batch_size, frames, size, size, 3, device=device),
        "mask": torch.empty(batch_size, frames, size, size, device=device),
        "loss_mask": torch.ones(batch_size, latent, latent, dtype=torch.bool, device=device),
    }


def batch_shapes(config: DictConfig) -> tuple[int, int, int]:
    """(frame size, frames per sample, latent size) of the config's training data and model."""
    data = config.data.params.train.params
    latent = int(config.model.params.unet_config.params.image_size)
    return int(data.get("size", 256)), int(data.get("num_frames", 4)), latent


def training_model(config: DictConfig, use_checkpoint: bool) -> torch.nn.Module:
    """The config's Lightning module in training mode, random weights, learning rate set."""
    model_config = config.model.copy()
    model_config.params.unet_config.params.use_checkpoint = use_checkpoint
    model = instantiate_from_config(model_config).train()
    model.learning_rate = float(model_config.base_learning_rate)
    return model


def optimizer_of(model: torch.nn.Module) -> torch.optim.Optimizer:
    optimizer = model.configure_optimizers()
    return optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer


def measure_steps(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, torch.Tensor],
    precision: str,
    reset_peak: Callable[[], None],
    read_peak: Callable[[], int],
    steps: int = 2,
) -> int:
    """Run `steps` training steps as Lightning would (forward under autocast for bf16-mixed, backward,
    optimizer step, EMA update); the peak bytes of the last one (AdamW creates its state on the first)."""
    device_type = batch["image"].device.type
    for _ in range(steps):
        reset_peak()
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            loss, _ = model.shared_step(batch)
        loss.backward()
        del loss
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.on_train_batch_end()
    return read_peak()


def estimate(config_path: Path, batch_size: int, precision: str, use_checkpoint: bool) -> StepMemory:
    """The resident and peak memory of a training step of the config's model at `batch_size`."""
    config = OmegaConf.load(config_path)
    counter = LiveStorageBytes()
    with FakeTensorMode(allow_non_fake_inputs=True), counter:
        model = training_model(config, use_checkpoint)
        batch = training_batch(batch_size, *batch_shapes(config))
        optimizer = optimizer_of(model)
        peak = measure_steps(model, optimizer, batch, precision, counter.reset_peak, lambda: counter.peak)
        resident = counter.current - sum(t.untyped_storage().nbytes() for t in batch.values())
    return StepMemory(batch_size, precision, use_checkpoint, round(resident / GIB, 2), round(peak / GIB, 2))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=Path("configs/inpaint_4frame.yaml"))
    parser.add_argument("--batch-size", type=int, nargs="+", default=[48], help="per GPU (default 48)")
    parser.add_argument("--precision", choices=PRECISIONS, nargs="+", default=list(PRECISIONS))
    parser.add_argument("--json", type=Path, help="also write the table as JSON here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = [
        estimate(args.config, batch_size, precision, use_checkpoint)
        for batch_size in args.batch_size
        for precision in args.precision
        for use_checkpoint in (False, True)
    ]
    print(f"{args.config}: estimated memory of one training step per GPU (GiB)")
    print("| batch | precision | use_checkpoint | resident | peak |\n| --- | --- | --- | --- | --- |")
    for row in rows:
        print(
            f"| {row.batch_size} | {row.precision} | {row.use_checkpoint} | {row.resident_gib} | {row.peak_gib} |"
        )
    if args.json:
        args.json.write_text(json.dumps([asdict(row) for row in rows], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
