"""A training run's configs and directory: merging configs and overrides, and where a fresh or resumed
run writes."""

from __future__ import annotations

import argparse
import glob
import re
from collections.abc import Mapping
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, OmegaConfBaseException
from pytorch_lightning.utilities import rank_zero_only
from yaml import YAMLError

from ldm.util import InputError, first_line, get_obj_from_str

TIMESTAMP_FORMAT = "%Y-%m-%dT%H-%M-%S"
LAST_CHECKPOINT = "last.ckpt"


def load_configs(paths: list[str], overrides: list[str]) -> DictConfig:
    """Merge the YAML files left to right, then the key=value overrides."""
    configs = []
    for path in paths:
        if not Path(path).is_file():
            raise InputError(f"{path}: no such config file")
        try:
            configs.append(OmegaConf.load(path))
        except (YAMLError, OmegaConfBaseException) as err:
            raise InputError(f"{path}: not a valid YAML config ({first_line(err)})") from None
    bad = [item for item in overrides if "=" not in item or item.startswith("-")]
    if bad:
        raise InputError(f"unrecognised argument {bad[0]!r} (config overrides are written key=value)")
    try:
        return OmegaConf.merge(*configs, OmegaConf.from_dotlist(overrides))
    except OmegaConfBaseException as err:
        raise InputError(f"cannot apply the config overrides: {first_line(err)}") from None


def check_resolvable(config: DictConfig, sources: list[str]) -> None:
    """Resolve every interpolation now so a missing environment variable is one clear error."""
    try:
        OmegaConf.to_container(config, resolve=True)
    except InterpolationResolutionError as err:
        where = ", ".join(sources)
        missing = re.search(r"Environment variable '([^']+)' not found", err.msg)
        if missing:
            raise InputError(
                f"{where}: {err.full_key} reads the environment variable {missing.group(1)}, which is not set"
            ) from None
        raise InputError(f"{where}: cannot resolve {err.full_key}: {err.msg}") from None


def merged_node(default: Mapping, override: Mapping | None) -> DictConfig:
    """An override node whose `target` is another class replaces the default; one with only `params`
    (or a target naming the same class, e.g. main.ImageLogger) updates it."""
    if not override:
        return OmegaConf.create(default)
    target = override.get("target", default["target"])
    if target != default["target"] and get_obj_from_str(target) is not get_obj_from_str(default["target"]):
        return OmegaConf.create(override)
    return OmegaConf.merge(default, {**override, "target": default["target"]})


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
        raise InputError("give a config with -b/--base (or -r/--resume a run)")
    name = opt.name or Path(opt.base[0]).stem
    root = Path(opt.logdir) / opt.project if opt.project else Path(opt.logdir)
    paths = RunPaths(root / f"{now}_{name}{opt.postfix}")
    if rank_zero_only.rank == 0 and paths.logdir.exists():
        raise InputError(f"{paths.logdir}: run directory already exists (continue it with --resume)")
    return paths


def resumed_run(resume: str) -> RunPaths:
    """The run directory and checkpoint named by --resume (a run directory or a checkpoint in it)."""
    path = Path(resume)
    if path.is_dir():
        checkpoint = path / "checkpoints" / LAST_CHECKPOINT
        if not checkpoint.is_file():
            raise InputError(
                f"{path}: no checkpoints/{LAST_CHECKPOINT} (not a run directory, or nothing saved yet)"
            )
        logdir = path
    elif path.is_file():
        checkpoint, logdir = path, path.resolve().parent.parent
        if path.resolve().parent.name != "checkpoints":
            raise InputError(f"{path}: not inside a run's checkpoints/ directory")
    else:
        raise InputError(f"{path}: no such run directory or checkpoint")
    return RunPaths(logdir, checkpoint)


def saved_configs(paths: RunPaths) -> list[str]:
    found = sorted(glob.glob(str(paths.cfgdir / "*.yaml")))
    if not found:
        raise InputError(f"{paths.cfgdir}: no saved configs to resume the run with")
    return found


def prepare_run(
    opt: argparse.Namespace, overrides: list[str], now: str
) -> tuple[RunPaths, DictConfig, DictConfig]:
    """The run's paths, its project config (model, data, ...) and its lightning config."""
    if opt.resume and opt.name:
        raise InputError("-n/--name and -r/--resume cannot be used together (a resumed run keeps its name)")
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
            raise InputError(f"{', '.join(sources)}: the config has no '{key}' section")
    lightning_config = config.pop("lightning", OmegaConf.create())
    return paths, config, lightning_config
