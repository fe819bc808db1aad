"""The data module that builds its datasets from config nodes (the published main.DataModuleFromConfig)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import partial

import cv2
import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ldm.util import InputError, instantiate_from_config


class DataModuleFromConfig(pl.LightningDataModule):
    """Train/validation/test/predict datasets built from config nodes.

    `wrap` is accepted for published configs: the published module wrapped map-style datasets in a
    pass-through class, which changes nothing for the datasets here. Each DataLoader worker gets its own seed (from the run's seed, the worker id and the global
    rank), so random masks differ across workers and processes. With several processes, each takes
    its share of one shuffle drawn from `shuffle_seed` (main.py sets it from the run's seed), so an
    epoch shows every training sample once.
    """

    SPLITS_FOR_STAGE = {
        "fit": ("train", "validation"),
        "validate": ("validation",),
        "test": ("test",),
        "predict": ("predict",),
    }

    def __init__(
        self,
        batch_size: int,
        train: Mapping | None = None,
        validation: Mapping | None = None,
        test: Mapping | None = None,
        predict: Mapping | None = None,
        num_workers: int | None = None,
        shuffle_validation: bool = False,
        pin_memory: bool | None = None,
        wrap: bool = False,
    ):
        super().__init__()
        self.batch_size = batch_size
        self.num_workers = min(2 * batch_size, os.cpu_count() or 1) if num_workers is None else num_workers
        self.shuffle_validation = shuffle_validation
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        nodes = {"train": train, "validation": validation, "test": test, "predict": predict}
        self.dataset_configs = {split: node for split, node in nodes.items() if node is not None}
        self.datasets: dict[str, Dataset] = {}
        self.shuffle_seed = 0

    def has_split(self, split: str) -> bool:
        return split in self.dataset_configs

    def setup(self, stage: str | None = None) -> None:
        for split in self.SPLITS_FOR_STAGE.get(stage, tuple(self.dataset_configs)):
            if split in self.dataset_configs:
                self._dataset(split)

    def _dataset(self, split: str) -> Dataset:
        """The split's dataset, built on first use."""
        if split not in self.dataset_configs:
            raise InputError(f"the config has no data.params.{split} dataset")
        if split not in self.datasets:
            self.datasets[split] = instantiate_from_config(self.dataset_configs[split])
        return self.datasets[split]

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self._dataset(split)
        rank = self.trainer.global_rank if self.trainer is not None else 0
        world_size = getattr(self.trainer, "world_size", 1)
        sampler = None
        if shuffle and world_size > 1:  # Lightning's would shuffle with each process's own seed
            sampler = DistributedSampler(dataset, world_size, rank, shuffle=True, seed=self.shuffle_seed)
        if self.num_workers > 0:
            # Workers share the cores, so OpenCV runs single-threaded in them. They inherit the
            # setting; changing it inside a forked worker deadlocks once this process has started
            # OpenCV's thread pool.
            cv2.setNumThreads(1)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            num_workers=self.num_workers,
            worker_init_fn=partial(pl_worker_init_function, rank=rank),
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", shuffle=self.shuffle_validation)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", shuffle=False)
