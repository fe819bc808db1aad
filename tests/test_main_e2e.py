"""`python main.py` end to end on the miniature EPIC/VISOR/EGO4D fixture data (real formats, built and
preprocessed by the data scripts): a fresh run's log layout, resuming it, and a 2-process CPU DDP run.

Each run is its own subprocess (two DDP fits in one process would collide on the port). The runs
are the short ones of scripts/gpu_smoke.py (SHORT_RUN): 2 training batches per epoch, 1 validation
batch, images every 2 steps with 1 sample and 2 DDIM steps.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from scripts.gpu_smoke import FIRST_STAGE_SHORT_RUN, SHORT_RUN
from tests.conftest import ROOT
from tests.data_fixture import shared_fixture_data

TINY = ROOT / "configs" / "inpaint_4frame_tiny.yaml"
IMAGE_KEYS = ("inputs", "mask", "target", "reconstruction", "samples")


@pytest.fixture(scope="module")
def data_env(tmp_path_factory) -> dict[str, str]:
    return shared_fixture_data(tmp_path_factory)


def main_py(*args: str, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *args],
        cwd=ROOT,
        env=os.environ | env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def fresh_run(logdir: Path, name: str, data_env: dict[str, str], *extra: str) -> Path:
    """Train a fresh tiny model for a few steps; return its run directory."""
    lists = [
        f"data.params.train.params.visor_files={data_env['VISOR_TRAIN_LIST']}",
        f"data.params.validation.params.visor_files={data_env['VISOR_VAL_LIST']}",
    ]
    main_py(
        "--base",
        str(TINY),
        "-t",
        "--no-test",
        "--logdir",
        str(logdir),
        "-n",
        name,
        *SHORT_RUN,
        *lists,
        *extra,
        env=data_env,
    )
    (run,) = logdir.iterdir()
    return run


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_env) -> Path:
    return fresh_run(tmp_path_factory.mktemp("logs"), "e2e", data_env, "lightning.trainer.max_steps=4")


def test_fresh_run_writes_the_log_layout(run_dir):
    assert run_dir.name.endswith("_e2e") and run_dir.name[:4].isdigit()
    checkpoints = run_dir / "checkpoints"
    last = load_checkpoint(checkpoints / "last.ckpt")
    assert last["global_step"] == 4
    (state,) = [v for k, v in last["callbacks"].items() if k.startswith("ModelCheckpoint")]
    best = Path(state["best_model_path"])
    assert state["monitor"] == "val/loss_ema" and best.parent == checkpoints and best.is_file()
    assert best.name.startswith("best-") and torch.isfinite(state["best_model_score"])
    assert sorted(p.name for p in checkpoints.iterdir()) == sorted([best.name, "last.ckpt"])

    configs = sorted(p.name for p in (run_dir / "configs").iterdir())
    assert [name.split("-")[-1] for name in configs] == ["lightning.yaml", "project.yaml"]
    project = (run_dir / "configs" / configs[1]).read_text()
    assert "${oc.env:EPIC_ROOT}" in project and "batch_size: 2" in project

    for split, batch_idx in (("train", 1), ("val", 0)):
        for key in IMAGE_KEYS:
            names = sorted(p.name for p in (run_dir / "images" / split).glob(f"{key}_gs-*.png"))
            assert names == [
                f"{key}_gs-{step:06}_e-{step // 2 - 1:06}_b-{batch_idx:06}.png" for step in (2, 4)
            ]
    inputs = np.asarray(Image.open(run_dir / "images" / "train" / "inputs_gs-000002_e-000000_b-000001.png"))
    target = np.asarray(Image.open(run_dir / "images" / "train" / "target_gs-000002_e-000000_b-000001.png"))
    assert inputs.shape == (256 + 4, 4 * 256 + 4, 3) and target.shape == (256 + 4, 256 + 4, 3)

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss_step", "val/loss", "val/loss_ema", "lr-AdamW"} <= scalars
    assert {"train/inputs", "val/samples"} <= set(events.Tags()["images"])
    (lr,) = {event.value for event in events.Scalars("lr-AdamW")}
    assert lr == pytest.approx(2 * 1e-4)  # --scale_lr: 1 (accumulate) x 1 (device) x 2 (batch) x base


def test_resume_continues_in_the_same_directory(run_dir, data_env):
    before = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    main_py("--resume", str(run_dir), "-t", "lightning.trainer.max_steps=6", env=data_env)
    assert [p.name for p in run_dir.parent.iterdir()] == [run_dir.name]
    after = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert after["global_step"] == 6
    assert int(after["state_dict"]["model_ema.num_updates"]) == 6
    adam_steps = {float(s["step"]) for s in after["optimizer_states"][0]["state"].values()}
    assert adam_steps == {6.0}
    assert not torch.equal(
        before["state_dict"]["model_ema.diffusion_modelout4weight"],
        after["state_dict"]["model_ema.diffusion_modelout4weight"],
    )
    assert len(list((run_dir / "configs").iterdir())) == 4
    assert (run_dir / "images" / "train" / "samples_gs-000006_e-000002_b-000001.png").is_file()


def test_a_resume_that_lightning_refuses_saves_no_configs(run_dir, data_env):
    """Its override would otherwise come back with every later resume, which merges the saved configs."""
    configs = sorted((run_dir / "configs").iterdir())
    result = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "--resume", str(run_dir), "-t"]
        + ["lightning.trainer.max_steps=8", "lightning.trainer.val_check_interval=100"],
        cwd=ROOT,
        env=os.environ | data_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0 and "val_check_interval" in result.stderr
    assert sorted((run_dir / "configs").iterdir()) == configs


def test_cpu_ddp_with_two_processes(tmp_path, data_env):
    ddp = [
        "lightning.trainer.accelerator=cpu",
        "lightning.trainer.devices=2",
        "lightning.trainer.strategy=ddp",
        *rank_state(tmp_path / "ranks"),
    ]
    run = fresh_run(tmp_path / "logs", "ddp", data_env, "lightning.trainer.max_steps=2", *ddp)
    last = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 2 and int(last["state_dict"]["model_ema.num_updates"]) == 2
    (state,) = [v for k, v in last["callbacks"].items() if k.startswith("ModelCheckpoint")]
    assert Path(state["best_model_path"]).is_file()
    ranks = [torch.load(tmp_path / "ranks" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    # DDP does not broadcast the EMA buffers before each step; each process updates them the same way.
    assert ranks[0]["settings"] == {
        "broadcast_buffers": False,
        "find_unused_parameters": False,
        "gradient_as_bucket_view": True,
    }
    ema = [{k: v for k, v in rank["buffers"].items() if k.startswith("model_ema.")} for rank in ranks]
    assert ema[0].keys() == ema[1].keys() and len(ema[0]) > 2
    for name, value in ema[0].items():
        torch.testing.assert_close(ema[1][name], value, rtol=0, atol=0, msg=name)
    for name, value in ema[0].items():
        torch.testing.assert_close(last["state_dict"][name], value, rtol=0, atol=0, msg=name)


def rank_state(out: Path) -> list[str]:
    """Overrides that add tests.ddp_probe.RankState, which saves each process's buffers into `out`."""
    return [
        "lightning.callbacks.rank_state.target=tests.ddp_probe.RankState",
        f"lightning.callbacks.rank_state.params.out={out}",
    ]


def test_first_stage_trains_under_ddp_while_its_codebook_waits(tmp_path):
    """configs/vq_f4_small.yaml starts its codebook at step 300: until then the codebook gets no
    gradient, which DDP must be told to expect."""
    main_py(
        "--base",
        str(ROOT / "configs" / "vq_f4_small.yaml"),
        "-t",
        "--no-test",
        "--logdir",
        str(tmp_path),
        "lightning.trainer.accelerator=cpu",
        "lightning.trainer.devices=2",
        "lightning.trainer.strategy=ddp",
        *FIRST_STAGE_SHORT_RUN,
        *rank_state(tmp_path / "ranks"),
        env={},
    )
    (run,) = [path for path in tmp_path.iterdir() if path.name != "ranks"]
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 2
    ranks = [torch.load(tmp_path / "ranks" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["settings"]["find_unused_parameters"] is True
