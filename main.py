"""Train VIDM with PyTorch Lightning, command-line compatible with the published main.py.

    python main.py --base configs/inpaint_4frame.yaml -t --gpus 0,1,2,3 [a.b.c=value ...]
    python main.py --resume logs/2024-01-01T00-00-00_inpaint_4frame -t

A run writes `<logdir>/[<project>/]<timestamp>_<name or config name><postfix>/` with
`checkpoints/` (last.ckpt and the best by the model's `monitor`), `configs/` (the merged project
and lightning configs), `images/` (ImageLogger grids) and `tensorboard/` (or `csv/` without
TensorBoard). Only the global-rank-zero process writes there.
"""

from __future__ import annotations

import argparse
import glob
import inspect
import logging
import math
import os
import pdb
import re
import sys
import traceback
from collections.abc import Mapping
from datetime import datetime
from functools import partial
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.seed import pl_worker_init_function
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, OmegaConfBaseException
from pytorch_lightning.callbacks import Callback, Checkpoint
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from pytorch_lightning.utilities.model_helpers import is_overridden
from torch.utils.data import DataLoader, Dataset
from yaml import YAMLError

from ldm.checkpoint import CheckpointError, load_state_into, read_state_dict
from ldm.util import instantiate_from_config, to_uint8
from ldm.utils.image_grid import image_grid, save_image

log = logging.getLogger("main")

TIMESTAMP_FORMAT = "%Y-%m-%dT%H-%M-%S"
LAST_CHECKPOINT = "last.ckpt"


class UsageError(Exception):
    """Bad command line, config or paths; reported as one line without a traceback."""


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


TRUE_WORDS = ("yes", "true", "t", "y", "1")
FALSE_WORDS = ("no", "false", "f", "n", "0")
BOOLEAN_FLAGS = ("-t", "--train", "--no-test", "-d", "--debug", "--scale_lr")


def str2bool(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    if value.lower() in TRUE_WORDS:
        return True
    if value.lower() in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {value!r}")


def explicit_flag_values(argv: list[str]) -> list[str]:
    """Give each boolean flag not followed by true/false an explicit `true`.

    The flags take an optional value (`-t`, `-t false`), and argparse would otherwise swallow a
    following override: `-t lightning.trainer.max_steps=6` must train *and* apply the override.
    """
    out = []
    for index, token in enumerate(argv):
        out.append(token)
        following = argv[index + 1].lower() if index + 1 < len(argv) else ""
        if token in BOOLEAN_FLAGS and following not in TRUE_WORDS + FALSE_WORDS:
            out.append("true")
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        description="Train (-t) a latent-diffusion model such as VIDM from OmegaConf configs with Lightning.",
        epilog=(
            "Trailing key=value arguments override config entries, e.g. lightning.trainer.max_steps=100 "
            "data.params.batch_size=2. Every lightning.trainer.* key is passed to pytorch_lightning.Trainer "
            "(accelerator, devices, strategy, num_nodes, precision, accumulate_grad_batches, ...). "
            "Without --gpus the run uses the CPU."
        ),
    )
    flag = {"type": str2bool, "nargs": "?", "const": True}
    parser.add_argument(
        "-b",
        "--base",
        nargs="*",
        default=[],
        metavar="config.yaml",
        help="configs, merged left to right (later ones win)",
    )
    parser.add_argument("-t", "--train", default=False, help="train the model", **flag)
    parser.add_argument("--no-test", default=False, help="skip testing after training", **flag)
    parser.add_argument(
        "-r",
        "--resume",
        default="",
        metavar="DIR_OR_CKPT",
        help="continue a run from its log directory (its checkpoints/last.ckpt) or one of its checkpoints; "
        "the model, EMA, optimizer and step are restored and the run keeps writing into the same directory",
    )
    parser.add_argument("-n", "--name", default="", help="run name (default: the first config's file name)")
    parser.add_argument("-p", "--project", default="", help="group the run under <logdir>/<project>/")
    parser.add_argument("-f", "--postfix", default="", help="appended to the run directory's name")
    parser.add_argument(
        "-l", "--logdir", default="logs", help="where run directories are made (default: logs)"
    )
    parser.add_argument("-s", "--seed", type=int, default=23, help="random seed (default: 23)")
    parser.add_argument(
        "-d",
        "--debug",
        default=False,
        help="open the debugger (pdb post-mortem) on an unexpected error",
        **flag,
    )
    parser.add_argument(
        "--scale_lr",
        default=True,
        help="learning rate = base_learning_rate x accumulate_grad_batches x devices x nodes x batch_size "
        "(default: true; false uses base_learning_rate as it is)",
        **flag,
    )
    parser.add_argument(
        "--gpus",
        default=None,
        metavar="IDS",
        help="GPU indices, e.g. 0,1,2,3 (or -1 for all): train on them with DDP",
    )
    parser.add_argument(
        "--unsafe-load",
        action="store_true",
        help="read the --resume checkpoint with full unpickling (runs code in the file: only for files you trust)",
    )
    return parser


# ---------------------------------------------------------------------------------------- configs


def load_configs(paths: list[str], overrides: list[str]) -> DictConfig:
    """Merge the YAML files left to right, then the key=value overrides."""
    configs = []
    for path in paths:
        if not Path(path).is_file():
            raise UsageError(f"{path}: no such config file")
        try:
            configs.append(OmegaConf.load(path))
        except (YAMLError, OmegaConfBaseException) as err:
            raise UsageError(f"{path}: not a valid YAML config ({_first_line(err)})") from None
    bad = [item for item in overrides if "=" not in item or item.startswith("-")]
    if bad:
        raise UsageError(f"unrecognised argument {bad[0]!r} (config overrides are written key=value)")
    try:
        return OmegaConf.merge(*configs, OmegaConf.from_dotlist(overrides))
    except OmegaConfBaseException as err:
        raise UsageError(f"cannot apply the config overrides: {_first_line(err)}") from None


def check_resolvable(config: DictConfig, sources: list[str]) -> None:
    """Resolve every interpolation now so a missing environment variable is one clear error."""
    try:
        OmegaConf.to_container(config, resolve=True)
    except InterpolationResolutionError as err:
        where = ", ".join(sources)
        missing = re.search(r"Environment variable '([^']+)' not found", err.msg)
        if missing:
            raise UsageError(
                f"{where}: {err.full_key} reads the environment variable {missing.group(1)}, which is not set"
            ) from None
        raise UsageError(f"{where}: cannot resolve {err.full_key}: {err.msg}") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def merged_node(default: Mapping, override: Mapping | None) -> DictConfig:
    """An override node with its own `target` replaces the default; one with only `params` updates it."""
    if not override:
        return OmegaConf.create(default)
    if override.get("target", default["target"]) != default["target"]:
        return OmegaConf.create(override)
    return OmegaConf.merge(default, override)


# ------------------------------------------------------------------------------------- run layout


class RunPaths:
    """Where a run writes, and the checkpoint it resumes from (None for a fresh run)."""

    def __init__(self, logdir: Path, resume_checkpoint: Path | None = None):
        self.logdir = logdir.resolve()
        self.resume_checkpoint = resume_checkpoint
        self.ckptdir = self.logdir / "checkpoints"
        self.cfgdir = self.logdir / "configs"
        self.imgdir = self.logdir / "images"


def fresh_run(opt: argparse.Namespace, now: str) -> RunPaths:
    if not opt.base:
        raise UsageError("give a config with -b/--base (or -r/--resume a run)")
    name = opt.name or Path(opt.base[0]).stem
    root = Path(opt.logdir) / opt.project if opt.project else Path(opt.logdir)
    paths = RunPaths(root / f"{now}_{name}{opt.postfix}")
    if rank_zero_only.rank == 0 and paths.logdir.exists():
        raise UsageError(f"{paths.logdir}: run directory already exists (continue it with --resume)")
    return paths


def resumed_run(resume: str) -> RunPaths:
    """The run directory and checkpoint named by --resume (a run directory or a checkpoint in it)."""
    path = Path(resume)
    if path.is_dir():
        checkpoint = path / "checkpoints" / LAST_CHECKPOINT
        if not checkpoint.is_file():
            raise UsageError(
                f"{path}: no checkpoints/{LAST_CHECKPOINT} (not a run directory, or nothing saved yet)"
            )
        logdir = path
    elif path.is_file():
        checkpoint, logdir = path, path.resolve().parent.parent
        if path.resolve().parent.name != "checkpoints":
            raise UsageError(f"{path}: not inside a run's checkpoints/ directory")
    else:
        raise UsageError(f"{path}: no such run directory or checkpoint")
    return RunPaths(logdir, checkpoint)


def saved_configs(paths: RunPaths) -> list[str]:
    found = sorted(glob.glob(str(paths.cfgdir / "*.yaml")))
    if not found:
        raise UsageError(f"{paths.cfgdir}: no saved configs to resume the run with")
    return found


# ---------------------------------------------------------------------------------------- trainer


def parse_gpus(text: str) -> list[int] | int:
    """'0,1,2,3' (or '0,') → [0, 1, 2, 3]; '-1' → -1 (every GPU)."""
    if text.strip() == "-1":
        return -1
    items = [item for item in text.split(",") if item.strip()]
    if not items or not all(item.strip().isdigit() for item in items):
        raise UsageError(f"--gpus: expected GPU indices such as 0,1,2,3, got {text!r}")
    return [int(item) for item in items]


def trainer_arguments(trainer_config: DictConfig, gpus: str | None, default_root_dir: Path) -> dict[str, Any]:
    """Trainer kwargs: CPU unless --gpus; lightning.trainer.* from the config adds or overrides."""
    kwargs: dict[str, Any] = {"accelerator": "cpu", "devices": 1, "default_root_dir": str(default_root_dir)}
    kwargs.update(OmegaConf.to_container(trainer_config, resolve=True))
    if gpus is not None:
        devices = parse_gpus(gpus)
        several = devices == -1 or len(devices) > 1 or int(kwargs.get("num_nodes", 1)) > 1
        kwargs.update(accelerator="gpu", devices=devices)
        kwargs.setdefault("strategy", "ddp" if several else "auto")
    accepted = inspect.signature(pl.Trainer.__init__).parameters
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise UsageError(f"lightning.trainer.{unknown[0]}: not an argument of pytorch_lightning.Trainer")
    return kwargs


def scaled_learning_rate(
    model: pl.LightningModule, config: DictConfig, trainer: pl.Trainer, scale: bool
) -> None:
    """Set model.learning_rate from model.base_learning_rate (SPEC §3.4)."""
    if config.model.get("base_learning_rate") is None:
        raise UsageError("the config has no model.base_learning_rate")
    base_lr = float(config.model.base_learning_rate)
    if not scale:
        model.learning_rate = base_lr
        log.info("learning rate %.2e (--scale_lr false)", base_lr)
        return
    batch_size = int(config.data.params.batch_size)
    accumulate, processes = trainer.accumulate_grad_batches, trainer.num_devices * trainer.num_nodes
    model.learning_rate = accumulate * processes * batch_size * base_lr
    log.info(
        "learning rate %.2e = %d (accumulate_grad_batches) x %d (devices x nodes) x %d (batch size) x %.2e (base)",
        model.learning_rate,
        accumulate,
        processes,
        batch_size,
        base_lr,
    )


def default_callbacks(paths: RunPaths, monitor: str | None) -> dict[str, dict]:
    return {
        "learning_rate_logger": {
            "target": "pytorch_lightning.callbacks.LearningRateMonitor",
            "params": {"logging_interval": "step"},
        },
        "image_logger": {
            "target": "main.ImageLogger",
            "params": {"batch_frequency": 1000, "max_images": 4, "save_dir": str(paths.imgdir)},
        },
        "checkpoint": {
            "target": "pytorch_lightning.callbacks.ModelCheckpoint",
            "params": {
                "dirpath": str(paths.ckptdir),
                "filename": "best-{epoch:06}-{step:09}",
                "save_last": False,
                "monitor": monitor,
                "mode": "min",
                "save_top_k": 1 if monitor else 0,
                "verbose": True,
            },
        },
        "last_checkpoint": {"target": "main.LastCheckpoint", "params": {"dirpath": str(paths.ckptdir)}},
    }


def build_callbacks(
    lightning_config: DictConfig, paths: RunPaths, monitor: str | None, setup: Callback
) -> list[Callback]:
    """Defaults (LR monitor, image logger, checkpoints) merged with lightning.callbacks and
    lightning.modelcheckpoint; a callback set to null in the config is left out."""
    defaults = default_callbacks(paths, monitor)
    user = OmegaConf.to_container(lightning_config.get("callbacks") or OmegaConf.create(), resolve=True)
    if lightning_config.get("modelcheckpoint") is not None:
        user["checkpoint"] = OmegaConf.to_container(lightning_config.modelcheckpoint, resolve=True)
    callbacks: list[Callback] = [setup]
    for name in dict.fromkeys([*defaults, *user]):
        if name in user and user[name] is None:
            continue
        node = merged_node(defaults[name], user.get(name)) if name in defaults else user[name]
        callbacks.append(instantiate_from_config(node))
    return callbacks


def build_logger(lightning_config: DictConfig, paths: RunPaths) -> pl.loggers.Logger:
    """TensorBoard in <run>/tensorboard (CSV in <run>/csv without it), or lightning.logger."""
    if find_spec("tensorboard") or find_spec("tensorboardX"):
        default = {
            "target": "pytorch_lightning.loggers.TensorBoardLogger",
            "params": {"version": "tensorboard"},
        }
    else:
        default = {"target": "pytorch_lightning.loggers.CSVLogger", "params": {"version": "csv"}}
    default["params"].update(save_dir=str(paths.logdir), name="")
    return instantiate_from_config(merged_node(default, lightning_config.get("logger")))


# ------------------------------------------------------------------------------------------- data


class DataModuleFromConfig(pl.LightningDataModule):
    """Train/validation/test/predict datasets built from config nodes.

    `wrap` is accepted for published configs: the published module wrapped map-style datasets in a
    pass-through class, which changes nothing for the datasets here. Each DataLoader worker gets its own seed (from the run's seed, the worker id and the global
    rank), so random masks differ across workers and processes.
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

    def has_split(self, split: str) -> bool:
        return split in self.dataset_configs

    def setup(self, stage: str | None = None) -> None:
        for split in self.SPLITS_FOR_STAGE.get(stage, tuple(self.dataset_configs)):
            if split in self.dataset_configs:
                self._dataset(split)

    def _dataset(self, split: str) -> Dataset:
        """The split's dataset, built on first use."""
        if split not in self.dataset_configs:
            raise UsageError(f"the config has no data.params.{split} dataset")
        if split not in self.datasets:
            self.datasets[split] = instantiate_from_config(self.dataset_configs[split])
        return self.datasets[split]

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self._dataset(split)
        rank = self.trainer.global_rank if self.trainer is not None else 0
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
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


# -------------------------------------------------------------------------------------- callbacks


class SetupCallback(Callback):
    """Creates the run directory and saves the merged configs into configs/ (global rank zero)."""

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
        OmegaConf.save(self.config, self.paths.cfgdir / f"{self.now}-project.yaml")
        OmegaConf.save(
            OmegaConf.create({"lightning": self.lightning_config}),
            self.paths.cfgdir / f"{self.now}-lightning.yaml",
        )
        log.info("run directory %s", self.paths.logdir)


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


# ------------------------------------------------------------------------------------------- main


def build_model(config: DictConfig, paths: RunPaths, unsafe: bool = False) -> pl.LightningModule:
    """The model from `config.model`; a fresh run applies `config.initializer`, a resumed run checks
    that the checkpoint fits (the Trainer restores it)."""
    resumed = paths.resume_checkpoint
    resumed_state = read_state_dict(resumed, unsafe=unsafe) if resumed else None
    model = instantiate_from_config(config.model)
    if resumed_state is not None:
        load_state_into(model, resumed_state, resumed)
    elif config.get("initializer") is not None:
        initializer = instantiate_from_config(config.initializer)
        getattr(initializer, "init", initializer)(model)  # published initializers have only init()
    return model


def prepare_run(
    opt: argparse.Namespace, overrides: list[str], now: str
) -> tuple[RunPaths, DictConfig, DictConfig]:
    """The run's paths, its project config (model, data, ...) and its lightning config."""
    if opt.resume and opt.name:
        raise UsageError("-n/--name and -r/--resume cannot be used together (a resumed run keeps its name)")
    if opt.resume:
        paths = resumed_run(opt.resume)
        sources = [*saved_configs(paths), *opt.base]
    else:
        paths = fresh_run(opt, now)
        sources = list(opt.base)
    config = load_configs(sources, overrides)
    check_resolvable(config, sources)
    for key in ("model", "data"):
        if config.get(key) is None:
            raise UsageError(f"{', '.join(sources)}: the config has no '{key}' section")
    lightning_config = config.pop("lightning", OmegaConf.create())
    return paths, config, lightning_config


def build_data(config: DictConfig, stage: str) -> pl.LightningDataModule:
    """The data module with the datasets of `stage` built, so missing data fails before training."""
    data = instantiate_from_config(config.data)
    try:
        data.setup(stage)
    except (OSError, ValueError) as err:
        raise UsageError(f"data: {_first_line(err)}") from None
    return data


def build_trainer(
    opt: argparse.Namespace, paths: RunPaths, setup: SetupCallback, monitor: str | None
) -> pl.Trainer:
    lightning_config = setup.lightning_config
    try:
        return pl.Trainer(
            **trainer_arguments(
                lightning_config.get("trainer") or OmegaConf.create(), opt.gpus, paths.logdir
            ),
            logger=build_logger(lightning_config, paths),
            callbacks=build_callbacks(lightning_config, paths, monitor, setup),
        )
    except (MisconfigurationException, ValueError) as err:
        raise UsageError(f"lightning config: {_first_line(err)}") from None


def run(opt: argparse.Namespace, overrides: list[str]) -> None:
    now = datetime.now().strftime(TIMESTAMP_FORMAT)
    paths, config, lightning_config = prepare_run(opt, overrides, now)
    pl.seed_everything(opt.seed, verbose=False)  # the same initial weights in every process
    model = build_model(config, paths, unsafe=opt.unsafe_load)
    data = build_data(config, "fit" if opt.train else "test")
    setup = SetupCallback(paths, now, config, lightning_config)
    trainer = build_trainer(opt, paths, setup, getattr(model, "monitor", None))
    pl.seed_everything(opt.seed + trainer.global_rank, verbose=False)  # distinct noise per process
    log.info("seed %d (+ global rank %d)", opt.seed, trainer.global_rank)
    scaled_learning_rate(model, config, trainer, opt.scale_lr)

    if opt.train:
        ckpt_path = str(paths.resume_checkpoint) if paths.resume_checkpoint else None
        trainer.fit(model, data, ckpt_path=ckpt_path, weights_only=not opt.unsafe_load)
    if not opt.no_test and not trainer.interrupted:
        if data.has_split("test") and is_overridden("test_step", model):
            trainer.test(model, data)
        elif not opt.train:
            log.info("nothing to do: pass -t to train (and configure data.params.test to test)")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    argv = sys.argv[1:] if argv is None else argv
    opt, overrides = build_parser().parse_known_args(explicit_flag_values(argv))
    try:
        run(opt, overrides)
    except (UsageError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except Exception:
        if not (opt.debug and rank_zero_only.rank == 0):
            raise
        traceback.print_exc()
        pdb.post_mortem(sys.exc_info()[2])
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
