"""Training callbacks: the run directory, last.ckpt at the latest step, and image grids of the model's
samples (the published main.ImageLogger)."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from pytorch_lightning.callbacks import Callback, Checkpoint
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.trainer.states import TrainerFn

from ldm.training.runs import LAST_CHECKPOINT, RunPaths
from ldm.util import to_uint8

log = logging.getLogger("main")


class SetupCallback(Callback):
    """Creates the run directory and, once training has started, saves the merged configs into
    configs/ (global rank zero). Saving only then keeps out the settings Lightning refuses when the
    fit loop starts (a resume merges every saved config, so such a value would come back each time)."""

    def __init__(self, paths: RunPaths, now: str, config: DictConfig, lightning_config: DictConfig):
        super().__init__()
        self.paths = paths
        self.now = now
        self.config = config
        self.lightning_config = lightning_config

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not trainer.is_global_zero:
            return
        for folder in (self.paths.logdir, self.paths.ckptdir, self.paths.cfgdir, self.paths.imgdir):
            folder.mkdir(parents=True, exist_ok=True)
        log.info("run directory %s", self.paths.logdir)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        OmegaConf.save(self.config, self.paths.cfgdir / f"{self.now}-project.yaml")
        OmegaConf.save(
            OmegaConf.create({"lightning": self.lightning_config}),
            self.paths.cfgdir / f"{self.now}-lightning.yaml",
        )


class LastCheckpoint(Checkpoint):
    """Keeps `dirpath`/last.ckpt at the latest state: after every validation and epoch (and every
    `every_n_train_steps` steps if set), at the end of training, and after an exception in a
    single-process fit (Ctrl-C), so `--resume` continues from there (ModelCheckpoint's save_last
    only follows its best checkpoints). Being a Checkpoint, it runs after the ModelCheckpoint listed
    before it, so what it saves includes the latest best. Multi-process runs skip the exception
    save: it needs every process, which an exception in one of them cannot promise.
    """

    def __init__(self, dirpath: str, every_n_train_steps: int = 0):
        super().__init__()
        self.path = Path(dirpath) / LAST_CHECKPOINT
        self.every_n_train_steps = every_n_train_steps
        self.saved_step = -1

    def save(self, trainer: pl.Trainer) -> None:
        if trainer.global_step > 0 and trainer.global_step != self.saved_step:
            trainer.save_checkpoint(self.path, weights_only=False)
            self.saved_step = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self.every_n_train_steps and trainer.global_step % self.every_n_train_steps == 0:
            self.save(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # At the end of an epoch ModelCheckpoint saves in on_train_epoch_end: follow it there.
        if (
            trainer.state.fn == TrainerFn.FITTING
            and not trainer.sanity_checking
            and not trainer.is_last_batch
        ):
            self.save(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.save(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.save(trainer)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if trainer.world_size == 1 and trainer.state.fn == TrainerFn.FITTING and trainer.global_step > 0:
            log.warning(
                "%s: saving the state at step %d to %s",
                type(exception).__name__,
                trainer.global_step,
                self.path,
            )
            self.save(trainer)


class ImageLogger(Callback):
    """Saves the model's `log_images` as grids in `save_dir`/{train,val}/ and to TensorBoard.

    Training images every `batch_frequency` optimizer steps (and at steps 1, 2, 4, ... below it
    with `increase_log_steps`); validation images from the first batch of every validation run.
    `save_dir` defaults to <trainer.default_root_dir>/images (main.py sets it to <run>/images).
    """

    def __init__(
        self,
        batch_frequency: int,
        max_images: int = 8,
        increase_log_steps: bool = True,
        log_first_step: bool = False,
        log_validation: bool = True,
        disabled: bool = False,
        log_images_kwargs: Mapping | None = None,
        save_dir: str | None = None,
    ):
        super().__init__()
        if batch_frequency < 1:
            raise ValueError(f"ImageLogger batch_frequency must be at least 1, got {batch_frequency}")
        self.batch_frequency = batch_frequency
        self.max_images = max_images
        self.increase_log_steps = increase_log_steps
        self.log_first_step = log_first_step
        self.log_validation = log_validation
        self.disabled = disabled
        self.log_images_kwargs = dict(log_images_kwargs or {})
        self.save_dir = save_dir
        self._last_logged_step = -1

    def should_log(self, step: int) -> bool:
        if step == 0:
            return self.log_first_step
        warm_up = self.increase_log_steps and step < self.batch_frequency and math.log2(step).is_integer()
        return step % self.batch_frequency == 0 or warm_up

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step != self._last_logged_step and self.should_log(step):
            self._last_logged_step = step
            self.log_images(trainer, pl_module, batch, batch_idx, "train")

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.log_validation and batch_idx == 0 and dataloader_idx == 0 and not trainer.sanity_checking:
            self.log_images(trainer, pl_module, batch, batch_idx, "val")

    def log_images(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, split: str
    ) -> None:
        if self.disabled or self.max_images < 1 or not trainer.is_global_zero:
            return
        if not callable(getattr(pl_module, "log_images", None)):
            return
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            images = pl_module.log_images(batch, N=self.max_images, split=split, **self.log_images_kwargs)
        pl_module.train(was_training)
        folder = Path(self.save_dir or Path(trainer.default_root_dir) / "images") / split
        stem = f"gs-{trainer.global_step:06}_e-{trainer.current_epoch:06}_b-{batch_idx:06}"
        for key, value in images.items():
            grid = image_grid(to_uint8(value[: self.max_images]))
            save_image(grid, folder / f"{key}_{stem}.png")
            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_image(
                        f"{split}/{key}", grid, trainer.global_step, dataformats="HWC"
                    )


def squarish_columns(count: int, height: int, width: int) -> int:
    """How many columns make a grid of `count` images of height x width closest to square."""
    return max(1, min(count, round(math.sqrt(count * height / width))))


def image_grid(images: np.ndarray, columns: int | None = None, padding: int = 2) -> np.ndarray:
    """Tile (N,H,W,C) images row by row into one (rows*H + gaps, columns*W + gaps, C) image.

    Images are separated (and framed) by `padding` black pixels; `columns` defaults to a layout
    close to square.
    """
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"expected a non-empty batch of images (N,H,W,C), got shape {images.shape}")
    count, height, width, channels = images.shape
    columns = columns or squarish_columns(count, height, width)
    rows = math.ceil(count / columns)
    grid = np.zeros(
        (rows * (height + padding) + padding, columns * (width + padding) + padding, channels),
        dtype=images.dtype,
    )
    for index, image in enumerate(images):
        top = padding + (index // columns) * (height + padding)
        left = padding + (index % columns) * (width + padding)
        grid[top : top + height, left : left + width] = image
    return grid


def save_image(array: np.ndarray, path: str | Path) -> None:
    """Write an (H,W,3) uint8 array as an image file (format from the suffix), creating folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
