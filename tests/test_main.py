"""main.py's plumbing: command line, configs, trainer arguments, callbacks, data module, image grids,
and the one-line errors of the command."""

from __future__ import annotations

import os
import pdb
import random
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger
from torch.utils.data import Dataset

import ldm.training.trainer as trainer
import main
from ldm.training.callbacks import LastCheckpoint, SetupCallback, image_grid, squarish_columns
from ldm.training.cli import build_parser, explicit_flag_values
from ldm.training.runs import RunPaths, check_resolvable, fresh_run, load_configs, resumed_run, saved_configs
from ldm.training.trainer import (
    build_callbacks,
    build_logger,
    build_model,
    scaled_learning_rate,
    trainer_arguments,
)
from ldm.util import InputError, to_uint8
from tests.conftest import ROOT

OFFICIAL = ROOT / "configs" / "inpaint_4frame.yaml"
TINY = ROOT / "configs" / "inpaint_4frame_tiny.yaml"
DATA_VARIABLES = ("EPIC_ROOT", "DATA_LOCATION", "EGO4D_LOCATION")


def parse(*argv: str):
    return build_parser().parse_known_args(explicit_flag_values(list(argv)))


# ---------------------------------------------------------------------------------- command line


def test_boolean_flags_do_not_swallow_overrides():
    opt, overrides = parse("--resume", "logs/run", "-t", "lightning.trainer.max_steps=6")
    assert opt.train is True and opt.resume == "logs/run"
    assert overrides == ["lightning.trainer.max_steps=6"]
    opt, _ = parse("-b", "a.yaml", "b.yaml", "-t", "false", "--scale_lr", "False", "--no-test")
    assert (opt.train, opt.scale_lr, opt.no_test, opt.base) == (False, False, True, ["a.yaml", "b.yaml"])
    opt, _ = parse("-b", "a.yaml")
    assert (opt.train, opt.scale_lr, opt.seed, opt.logdir, opt.gpus) == (False, True, 23, "logs", None)


def test_help_lists_the_original_flags(capsys):
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--base", "--train", "--no-test", "--resume", "--name", "--project", "--debug", "--seed"):
        assert flag in text
    for flag in ("--postfix", "--logdir", "--scale_lr", "--gpus", "lightning.trainer.max_steps"):
        assert flag in text


@pytest.mark.parametrize(
    "gpus, devices, strategy",
    [
        (None, 1, None),
        ("0,1,2,3", [0, 1, 2, 3], "ddp"),
        ("0,", [0], "auto"),
        ("1", [1], "auto"),
        ("-1", -1, "ddp"),
    ],
)
def test_gpus_flag_maps_to_lightning_devices(tmp_path, gpus, devices, strategy):
    kwargs = trainer_arguments(OmegaConf.create({"benchmark": True}), gpus, tmp_path)
    assert kwargs["accelerator"] == ("cpu" if gpus is None else "gpu")
    assert kwargs["devices"] == devices and kwargs.get("strategy") == strategy
    assert kwargs["benchmark"] is True and kwargs["default_root_dir"] == str(tmp_path)


def test_trainer_config_sets_any_trainer_argument(tmp_path):
    config = OmegaConf.create({"accelerator": "cpu", "devices": 2, "strategy": "ddp", "max_steps": 9})
    kwargs = trainer_arguments(config, None, tmp_path)
    assert (kwargs["devices"], kwargs["strategy"], kwargs["max_steps"]) == (2, "ddp", 9)
    several_nodes = trainer_arguments(OmegaConf.create({"num_nodes": 2}), "0", tmp_path)
    assert several_nodes["strategy"] == "ddp" and several_nodes["num_nodes"] == 2
    kept = trainer_arguments(
        OmegaConf.create({"strategy": "ddp_find_unused_parameters_true"}), "0,1", tmp_path
    )
    assert kept["strategy"] == "ddp_find_unused_parameters_true"
    with pytest.raises(InputError, match="lightning.trainer.gpus: not an argument"):
        trainer_arguments(OmegaConf.create({"gpus": 2}), None, tmp_path)
    with pytest.raises(InputError, match="--gpus: expected GPU indices"):
        trainer_arguments(OmegaConf.create(), "zero", tmp_path)


# --------------------------------------------------------------------------------------- configs


def test_configs_merge_left_to_right_then_overrides(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("data:\n  params:\n    batch_size: 3\n    num_workers: 1\n")
    config = load_configs(
        [str(OFFICIAL), str(extra)], ["data.params.batch_size=5", "lightning.trainer.max_steps=7"]
    )
    assert (config.data.params.batch_size, config.data.params.num_workers) == (5, 1)
    assert config.lightning.trainer.max_steps == 7 and config.lightning.trainer.benchmark is True
    assert config.model.params.unet_config.params.model_channels == 256


def test_config_errors_are_one_line(tmp_path):
    with pytest.raises(InputError, match="absent.yaml: no such config file"):
        load_configs([str(tmp_path / "absent.yaml")], [])
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(InputError, match="broken.yaml: not a valid YAML config") as err:
        load_configs([str(broken)], [])
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="unrecognised argument '--bogus'"):
        load_configs([str(TINY)], ["--bogus"])


def test_missing_data_variable_is_named(monkeypatch):
    for name in DATA_VARIABLES:
        monkeypatch.setenv(name, "/data")
    monkeypatch.delenv("EGO4D_LOCATION")
    config = load_configs([str(TINY)], [])
    with pytest.raises(InputError) as err:
        check_resolvable(config, [str(TINY)])
    message = str(err.value)
    assert "\n" not in message and "inpaint_4frame_tiny.yaml" in message
    assert "environment variable EGO4D_LOCATION, which is not set" in message
    assert "data.params.train.params.background_config" in message


# ------------------------------------------------------------------------------ callbacks, logger


def test_callbacks_follow_the_lightning_config(tmp_path):
    lightning = load_configs([str(OFFICIAL)], []).lightning
    paths = RunPaths(tmp_path / "run")
    setup = SetupCallback(paths, "now", OmegaConf.create(), lightning)
    callbacks = build_callbacks(lightning, paths, "val/loss_ema", setup)
    by_type = {type(c): c for c in callbacks}
    image_logger = by_type[main.ImageLogger]
    assert (image_logger.batch_frequency, image_logger.max_images, image_logger.increase_log_steps) == (
        10000,
        8,
        False,
    )
    assert image_logger.save_dir == str(paths.imgdir)
    checkpoint = by_type[ModelCheckpoint]
    assert checkpoint.monitor == "val/loss_ema" and checkpoint.save_top_k == 1
    assert Path(checkpoint.dirpath) == paths.ckptdir
    assert by_type[LastCheckpoint].path == paths.ckptdir / "last.ckpt"
    assert callbacks.index(by_type[LastCheckpoint]) > callbacks.index(checkpoint)
    assert isinstance(by_type[LearningRateMonitor], LearningRateMonitor) and callbacks[0] is setup

    user = OmegaConf.create(
        {
            "modelcheckpoint": {"params": {"every_n_train_steps": 100}},
            "callbacks": {
                "image_logger": None,
                "learning_rate_logger": {"params": {"logging_interval": "epoch"}},
                "extra": {"target": "pytorch_lightning.callbacks.Timer"},
            },
        }
    )
    callbacks = build_callbacks(user, paths, None, setup)
    names = [type(c).__name__ for c in callbacks]
    assert names == ["SetupCallback", "LearningRateMonitor", "ModelCheckpoint", "LastCheckpoint", "Timer"]
    assert callbacks[1].logging_interval == "epoch"
    assert callbacks[2]._every_n_train_steps == 100 and callbacks[2].save_top_k == 0


def test_default_logger_is_tensorboard_in_the_run_directory(tmp_path):
    paths = RunPaths(tmp_path / "run")
    logger = build_logger(OmegaConf.create(), paths)
    assert isinstance(logger, TensorBoardLogger)
    assert Path(logger.log_dir) == paths.logdir / "tensorboard"
    csv_node = {"target": "pytorch_lightning.loggers.CSVLogger", "params": {"save_dir": str(tmp_path)}}
    csv = build_logger(OmegaConf.create({"logger": csv_node}), paths)
    assert type(csv).__name__ == "CSVLogger" and Path(csv.save_dir) == tmp_path


def test_scaled_learning_rate():
    config = OmegaConf.create({"model": {"base_learning_rate": 1e-6}, "data": {"params": {"batch_size": 48}}})
    trainer = SimpleNamespace(accumulate_grad_batches=2, num_devices=4, num_nodes=2)
    model = SimpleNamespace(learning_rate=None)
    scaled_learning_rate(model, config, trainer, scale=True)
    assert model.learning_rate == pytest.approx(2 * 4 * 2 * 48 * 1e-6)
    scaled_learning_rate(model, config, trainer, scale=False)
    assert model.learning_rate == 1e-6
    del config.model.base_learning_rate
    with pytest.raises(InputError, match="no model.base_learning_rate"):
        scaled_learning_rate(model, config, trainer, scale=True)


def test_image_logger_schedule():
    steady = main.ImageLogger(batch_frequency=8, increase_log_steps=False)
    assert [s for s in range(20) if steady.should_log(s)] == [8, 16]
    warming = main.ImageLogger(batch_frequency=8, increase_log_steps=True, log_first_step=True)
    assert [s for s in range(20) if warming.should_log(s)] == [0, 1, 2, 4, 8, 16]


# ------------------------------------------------------------------------------------ image grids


def test_image_grid_layout():
    images = np.stack([np.full((2, 3, 3), i * 10, np.uint8) for i in range(1, 6)])
    grid = image_grid(images, columns=2, padding=1)
    assert grid.shape == (3 * 3 + 1, 2 * 4 + 1, 3)
    assert grid[1, 1, 0] == 10 and grid[1, 5, 0] == 20 and grid[4, 1, 0] == 30 and grid[7, 1, 0] == 50
    assert grid[0].max() == 0 and grid[7, 5].max() == 0  # padding and the empty sixth cell
    assert squarish_columns(8, 256, 256) == 3 and squarish_columns(8, 256, 1024) == 1


def test_to_uint8_maps_model_range():
    images = torch.tensor([-1.0, 0.0, 1.0, 2.0]).view(1, 1, 1, 4)
    out = to_uint8(images)
    assert out.shape == (1, 1, 4, 3) and out.dtype == np.uint8
    assert out[0, 0, :, 0].tolist() == [0, 128, 255, 255]


# ------------------------------------------------------------------------------------ data module


class RandomDraws(Dataset):
    """Each item is what the worker's numpy, torch and Python generators draw next."""

    def __init__(self, length: int = 4):
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        return torch.tensor(
            [np.random.randint(1 << 30), torch.randint(1 << 30, ()).item(), random.getrandbits(30)]
        )


def draws(rank: int) -> torch.Tensor:
    node = {"target": "tests.test_main.RandomDraws"}
    data = main.DataModuleFromConfig(batch_size=1, train=node, num_workers=2)
    data.trainer = SimpleNamespace(global_rank=rank)
    torch.manual_seed(0)
    loader = data.train_dataloader()
    assert loader.worker_init_fn is not None
    return torch.cat(list(loader))  # items 0, 2 from worker 0; 1, 3 from worker 1


def test_dataloader_workers_and_ranks_draw_differently():
    rank0 = draws(0)
    assert torch.equal(rank0, draws(0)), "the same seed and rank must repeat"
    rank1 = draws(1)
    for column in range(3):
        assert rank0[0, column] != rank0[1, column], "two workers drew the same numbers"
        assert rank0[0, column] != rank1[0, column], "two ranks drew the same numbers"


def test_processes_share_one_shuffle_and_each_takes_its_part():
    """Two DDP processes seed differently (distinct noise); their training loaders still split one
    shuffle of the dataset between them (the trainer stands in for a 2-process DDP run)."""
    node = {"target": "tests.test_main.RandomDraws", "params": {"length": 16}}
    shares = []
    for rank in (0, 1):
        data = main.DataModuleFromConfig(batch_size=1, train=node, num_workers=0)
        data.trainer = SimpleNamespace(global_rank=rank, world_size=2)
        data.shuffle_seed = 5
        torch.manual_seed(rank)
        shares.append(list(data.train_dataloader().sampler))
    assert sorted(shares[0] + shares[1]) == list(range(16))
    assert shares[0] != list(range(0, 16, 2)), "shuffled"


def test_data_module_splits():
    node = {"target": "tests.test_main.RandomDraws"}
    data = main.DataModuleFromConfig(batch_size=2, train=node, validation=node)
    data.setup("fit")
    assert set(data.datasets) == {"train", "validation"} and not data.has_split("test")
    with pytest.raises(InputError, match="no data.params.test dataset"):
        data.test_dataloader()


def test_data_module_accepts_the_published_wrap_flag():
    node = {"target": "tests.test_main.RandomDraws"}
    for wrap in (False, True):
        data = main.DataModuleFromConfig(batch_size=2, train=node, wrap=wrap, num_workers=0)
        assert next(iter(data.train_dataloader())).shape == (2, 3)


# ------------------------------------------------------------------------------------- initializer


class InitOnly:
    """An initializer written for the published main.py: it has init(model) and nothing else."""

    def __init__(self, value: float):
        self.value = value

    def init(self, model: torch.nn.Module) -> None:
        torch.nn.init.constant_(model.weight, self.value)


class CallOnly:
    """An initializer that is called instead (as this project's own may be)."""

    def __init__(self, value: float):
        self.value = value

    def __call__(self, model: torch.nn.Module) -> None:
        torch.nn.init.constant_(model.weight, -self.value)


@pytest.mark.parametrize("target, expected", [("InitOnly", 0.5), ("CallOnly", -0.5)])
def test_a_fresh_run_applies_the_initializer(tmp_path, target, expected):
    config = OmegaConf.create(
        {
            "model": {"target": "torch.nn.Linear", "params": {"in_features": 2, "out_features": 2}},
            "initializer": {"target": f"tests.test_main.{target}", "params": {"value": 0.5}},
        }
    )
    model = build_model(config, RunPaths(tmp_path / "run"))
    assert torch.equal(model.weight, torch.full((2, 2), expected))


# ----------------------------------------------------------------------------- command-line errors


def run_main(*argv: str, env: dict | None = None) -> subprocess.Popen:
    environment = {k: v for k, v in os.environ.items() if k not in DATA_VARIABLES} | (env or {})
    return subprocess.Popen(
        [sys.executable, str(ROOT / "main.py"), *argv],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def command_errors(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """Three failing main.py commands, run at the same time to save start-up time."""
    root = tmp_path_factory.mktemp("errors")
    run = root / "run"
    (run / "configs").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    (run / "configs" / "2024-01-01T00-00-00-project.yaml").write_text(TINY.read_text())
    (run / "checkpoints" / "last.ckpt").write_bytes(b"this is not a checkpoint" * 20)
    present = {name: str(root) for name in DATA_VARIABLES}
    commands = {
        "missing config": run_main("-b", str(root / "nope.yaml"), "-t", "-l", str(root / "logs")),
        "missing variable": run_main(
            "-b", str(TINY), "-t", "-l", str(root / "logs"), env={"EPIC_ROOT": str(root)}
        ),
        "unreadable checkpoint": run_main("--resume", str(run), "-t", env=present),
    }
    results = {}
    for name, process in commands.items():
        out, err = process.communicate(timeout=120)
        results[name] = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    return results


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing config", "nope.yaml: no such config file"),
        ("missing variable", "environment variable DATA_LOCATION, which is not set"),
        ("unreadable checkpoint", "last.ckpt: not a readable PyTorch checkpoint"),
    ],
)
def test_command_errors_are_one_line(command_errors, case, expected):
    result = command_errors[case]
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_usage_errors_from_main_function(tmp_path, capsys):
    assert main.main(["-r", str(tmp_path / "absent"), "-t"]) == 1
    assert "absent: no such run directory or checkpoint" in capsys.readouterr().err
    assert main.main(["-r", str(tmp_path), "-n", "again"]) == 1
    assert "cannot be used together" in capsys.readouterr().err
    assert main.main(["-t"]) == 1
    assert "give a config with -b/--base" in capsys.readouterr().err
    empty_run = tmp_path / "run"
    (empty_run / "checkpoints").mkdir(parents=True)
    assert main.main(["-r", str(empty_run)]) == 1
    assert "no checkpoints/last.ckpt" in capsys.readouterr().err


# -------------------------------------------------------------------------------------- run paths


def test_run_directory_name(tmp_path):
    opt, _ = parse("-b", "configs/inpaint_4frame.yaml", "-l", str(tmp_path), "-p", "vidm", "-f", "_lr2")
    assert fresh_run(opt, "2024-05-01T10-00-00").logdir == (
        tmp_path / "vidm" / "2024-05-01T10-00-00_inpaint_4frame_lr2"
    )
    opt, _ = parse("-b", "a.yaml", "-l", str(tmp_path), "-n", "first")
    paths = fresh_run(opt, "now")
    assert paths.logdir == tmp_path / "now_first" and paths.ckptdir == tmp_path / "now_first" / "checkpoints"
    paths.logdir.mkdir()
    with pytest.raises(InputError, match="already exists"):
        fresh_run(opt, "now")


def test_resume_from_a_directory_or_a_checkpoint(tmp_path):
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "last.ckpt").touch()
    (checkpoints / "best-epoch=000001.ckpt").touch()
    from_dir = resumed_run(str(tmp_path / "run"))
    assert (from_dir.logdir, from_dir.resume_checkpoint) == (
        tmp_path / "run",
        checkpoints / "last.ckpt",
    )
    from_file = resumed_run(str(checkpoints / "best-epoch=000001.ckpt"))
    assert (
        from_file.logdir == tmp_path / "run" and from_file.resume_checkpoint.name == "best-epoch=000001.ckpt"
    )
    stray = tmp_path / "stray.ckpt"
    stray.touch()
    with pytest.raises(InputError, match="not inside a run's checkpoints/ directory"):
        resumed_run(str(stray))
    with pytest.raises(InputError, match="no saved configs"):
        saved_configs(from_dir)


def test_debug_flag_opens_post_mortem(monkeypatch):
    def broken(opt, overrides):
        raise RuntimeError("a bug")

    entered = []
    monkeypatch.setattr(trainer, "run", broken)
    monkeypatch.setattr(pdb, "post_mortem", entered.append)  # stands in for the interactive debugger
    assert main.main(["-b", "x.yaml", "-d"]) == 1 and len(entered) == 1
    with pytest.raises(RuntimeError, match="a bug"):
        main.main(["-b", "x.yaml"])
