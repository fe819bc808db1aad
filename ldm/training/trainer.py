"""Building and running the Trainer for main.py: devices, learning rate, callbacks, logger, the model
(with its initializer) and the data, then fit and test."""

from __future__ import annotations

import argparse
import inspect
import logging
import pdb
import sys
import traceback
from datetime import datetime
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.strategies import DDPStrategy, StrategyRegistry
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from pytorch_lightning.utilities.model_helpers import is_overridden

from ldm.checkpoint import CheckpointError, load_state_into, read_state_dict, saved_global_step
from ldm.training.callbacks import SetupCallback
from ldm.training.checkpoint_io import MappedCheckpointIO
from ldm.training.cli import build_parser, explicit_flag_values
from ldm.training.runs import TIMESTAMP_FORMAT, RunPaths, merged_node, prepare_run
from ldm.util import ConfigError, InputError, enable_tf32, first_line, instantiate_from_config

log = logging.getLogger("main")


def parse_gpus(text: str) -> list[int] | int:
    """'0,1,2,3' (or '0,') → [0, 1, 2, 3]; '-1' → -1 (every GPU)."""
    if text.strip() == "-1":
        return -1
    items = [item for item in text.split(",") if item.strip()]
    if not items or not all(item.strip().isdigit() for item in items):
        raise InputError(f"--gpus: expected GPU indices such as 0,1,2,3, got {text!r}")
    return [int(item) for item in items]


def several_processes(devices: Any, num_nodes: Any = 1) -> bool:
    """Whether Trainer(devices=..., num_nodes=...) runs more than one process (-1: every GPU)."""
    if int(num_nodes) > 1 or devices in (-1, "-1"):
        return True
    if isinstance(devices, str):
        devices = int(devices) if devices.strip().isdigit() else [d for d in devices.split(",") if d.strip()]
    return len(devices) > 1 if isinstance(devices, list | tuple) else isinstance(devices, int) and devices > 1


def trainer_arguments(trainer_config: DictConfig, gpus: str | None, default_root_dir: Path) -> dict[str, Any]:
    """Trainer kwargs: CPU unless --gpus; lightning.trainer.* from the config adds or overrides. More
    than one process means DDP unless the config names another strategy."""
    kwargs: dict[str, Any] = {"accelerator": "cpu", "devices": 1, "default_root_dir": str(default_root_dir)}
    kwargs.update(OmegaConf.to_container(trainer_config, resolve=True))
    if gpus is not None:
        kwargs.update(accelerator="gpu", devices=parse_gpus(gpus))
        kwargs.setdefault("strategy", "auto")
    if kwargs.get("strategy", "auto") == "auto" and several_processes(
        kwargs["devices"], kwargs.get("num_nodes", 1)
    ):
        kwargs["strategy"] = "ddp"
    accepted = inspect.signature(pl.Trainer.__init__).parameters
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise InputError(f"lightning.trainer.{unknown[0]}: not an argument of pytorch_lightning.Trainer")
    return kwargs


def ddp_strategy(name: Any, find_unused_parameters: bool = False) -> Any:
    """A DDP strategy name ('ddp', 'ddp_find_unused_parameters_true', ...) as the DDPStrategy it names,
    with buffers left alone and gradients kept in DDP's buckets; any other strategy as it is.

    DDP would otherwise broadcast every buffer from rank 0 before each step: the EMA weights are
    buffers (as large as the denoiser), and every rank already updates them identically from the
    synchronised weights. `find_unused_parameters` is for models that leave some trainable
    parameters out of a step's loss (a VQ codebook before quantisation starts).
    """
    if not isinstance(name, str) or name not in StrategyRegistry:
        return name
    entry = StrategyRegistry[name]
    if not issubclass(entry["strategy"], DDPStrategy):
        return name
    params = dict(entry["init_params"])
    params["find_unused_parameters"] = params.get("find_unused_parameters", False) or find_unused_parameters
    return entry["strategy"](**params, broadcast_buffers=False, gradient_as_bucket_view=True)


def scaled_learning_rate(
    model: pl.LightningModule, config: DictConfig, trainer: pl.Trainer, scale: bool
) -> None:
    """Set model.learning_rate from model.base_learning_rate, scaled as the published main.py does."""
    if config.model.get("base_learning_rate") is None:
        raise InputError("the config has no model.base_learning_rate")
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
            "target": "ldm.training.callbacks.ImageLogger",
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
        "last_checkpoint": {
            "target": "ldm.training.callbacks.LastCheckpoint",
            "params": {"dirpath": str(paths.ckptdir)},
        },
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


def build_data(config: DictConfig, stage: str) -> pl.LightningDataModule:
    """The data module with the datasets of `stage` built, so missing data fails before training."""
    data = instantiate_from_config(config.data)
    try:
        data.setup(stage)
    except (OSError, ValueError) as err:
        raise InputError(f"data: {first_line(err)}") from None
    return data


def build_trainer(
    opt: argparse.Namespace, paths: RunPaths, setup: SetupCallback, model: pl.LightningModule
) -> pl.Trainer:
    lightning_config = setup.lightning_config
    try:
        kwargs = trainer_arguments(
            lightning_config.get("trainer") or OmegaConf.create(), opt.gpus, paths.logdir
        )
        unused = bool(getattr(model, "leaves_parameters_unused", False))
        kwargs["strategy"] = ddp_strategy(kwargs.get("strategy", "auto"), unused)
        kwargs.setdefault("plugins", [MappedCheckpointIO()])
        return pl.Trainer(
            **kwargs,
            logger=build_logger(lightning_config, paths),
            callbacks=build_callbacks(lightning_config, paths, getattr(model, "monitor", None), setup),
        )
    except (MisconfigurationException, ValueError) as err:
        raise InputError(f"lightning config: {first_line(err)}") from None


def run_seed(seed: int, resumed_step: int) -> int:
    """`seed` for a fresh run; for a run resumed at `resumed_step`, a seed drawn from both, so that it
    does not replay the data order and noise of its first steps (Lightning restarts the epoch's
    shuffle on resume)."""
    if resumed_step == 0:
        return seed
    return int(np.random.SeedSequence([seed, resumed_step]).generate_state(1)[0] >> 1)


def run(opt: argparse.Namespace, overrides: list[str]) -> None:
    now = datetime.now().strftime(TIMESTAMP_FORMAT)
    paths, config, lightning_config = prepare_run(opt, overrides, now)
    pl.seed_everything(opt.seed, verbose=False)  # the same initial weights in every process
    model = build_model(config, paths, unsafe=opt.unsafe_load)
    data = build_data(config, "fit" if opt.train else "test")
    setup = SetupCallback(paths, now, config, lightning_config)
    trainer = build_trainer(opt, paths, setup, model)
    seed = run_seed(opt.seed, saved_global_step(paths.resume_checkpoint, opt.unsafe_load))
    pl.seed_everything(seed + trainer.global_rank, verbose=False)  # distinct noise per process
    data.shuffle_seed = seed  # one shuffle shared by all processes
    log.info("seed %d (+ global rank %d)", seed, trainer.global_rank)
    scaled_learning_rate(model, config, trainer, opt.scale_lr)
    if trainer.strategy.root_device.type == "cuda":
        enable_tf32()  # float32 matmuls on tensor cores; bf16-mixed is a lightning.trainer.precision away

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
    except (InputError, ConfigError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except Exception:
        if not (opt.debug and rank_zero_only.rank == 0):
            raise
        traceback.print_exc()
        pdb.post_mortem(sys.exc_info()[2])
        return 1
    return 0
