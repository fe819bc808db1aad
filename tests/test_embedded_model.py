"""The embedded small VIDM, its demo data and the command that trains it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from safetensors import safe_open
from safetensors.torch import load_file

import demo_script
from ldm.evaluation.metrics import psnr
from ldm.inference.inpainter import Inpainter
from ldm.inference.model import SMALL_CONFIG, SMALL_WEIGHTS, ModelChoice, choose_model, load_model
from tests.conftest import ROOT
from tests.test_inference_support import assert_one_error_line, single_thread

sys.path.insert(0, str(ROOT))
from scripts.make_demo_data import write_demo  # noqa: E402
from scripts.train_small import main as train_small  # noqa: E402
from scripts.train_small import parse_args, phases  # noqa: E402

DEMO = ROOT / "demo_data"


def read(path):
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def test_demo_data_has_the_published_layout():
    raw, masks = sorted((DEMO / "raw").glob("*.jpg")), sorted((DEMO / "masks").glob("*.png"))
    assert len(raw) == len(masks) == 4
    assert [p.stem for p in raw] == [p.stem for p in masks]
    for frame, mask in zip(raw, masks, strict=True):
        assert read(frame).shape == (256, 256, 3)
        assert read(mask).shape == (256, 256, 3) and set(np.unique(read(mask))) == {0, 255}


def test_demo_data_is_what_the_script_writes(tmp_path):
    write_demo(tmp_path / "demo")
    for sub, suffix in (("raw", "jpg"), ("masks", "png")):
        made = sorted((tmp_path / "demo" / sub).glob(f"*.{suffix}"))
        shipped = sorted((DEMO / sub).glob(f"*.{suffix}"))
        assert [p.name for p in made] == [p.name for p in shipped]
        for a, b in zip(made, shipped, strict=True):
            # Measured 0 to 0.28 (AMD EPYC, all 3 settings).
            assert np.abs(read(a).astype(int) - read(b)).mean() < 1.0, a.name


def test_embedded_weights_are_small_and_chosen_by_default():
    weights = ROOT / SMALL_WEIGHTS
    assert weights.is_file() and weights.stat().st_size <= 20 * 2**20
    if (ROOT / "models/nohands_weights.ckpt").is_file():
        pytest.skip("the released weights are installed, so they are the default")
    assert choose_model().checkpoint == weights


@pytest.mark.weights
def test_embedded_first_stage_reconstructs_held_out_frames():
    """The shipped first stage was trained: held-out demo frames survive encode/decode at 64 px.

    The shipped weights give 22.35 to 23.61 dB on these frames (AMD EPYC, all 3 settings of
    CONTRIBUTING.md); an untrained first stage 9.6 to 10.2 dB."""
    model, resolution = load_model(ModelChoice(ROOT / SMALL_CONFIG, ROOT / SMALL_WEIGHTS, "small"))
    frames = np.stack(
        [cv2.resize(read(p)[..., ::-1], (resolution, resolution), interpolation=cv2.INTER_AREA)
         for p in sorted((DEMO / "raw").glob("*.jpg"))]
    )  # fmt: skip
    with single_thread():
        decoded = Inpainter(model, steps=1).autoencode(frames)
    assert decoded.shape == frames.shape
    assert all(psnr(d, f) > 17 for d, f in zip(decoded, frames, strict=True))


@pytest.mark.weights
def test_demo_with_the_embedded_model(tmp_path):
    out = tmp_path / "output.png"
    args = [str(DEMO), "--steps", "10", "--out", str(out)]
    with single_thread():
        assert (
            demo_script.main(
                [*args, "--checkpoint", str(ROOT / SMALL_WEIGHTS), "--config", str(ROOT / SMALL_CONFIG)]
            )
            == 0
        )
    grid = read(out)
    assert grid.shape == (1024, 768, 3)
    frames = [read(p) for p in sorted((DEMO / "raw").glob("*.jpg"))]
    for row, frame in enumerate(frames):
        mask = grid[row * 256 : (row + 1) * 256, 256:512, 0] > 127
        result = grid[row * 256 : (row + 1) * 256, 512:]
        assert np.array_equal(result[~mask], frame[~mask])
        # Measured 71.7 to 97.1 grey levels (AMD EPYC, all 3 settings).
        assert np.abs(result[mask].astype(int) - frame[mask]).mean() > 5, "the hand is replaced"


def test_train_small_ramps_the_camera_motion_up_after_the_still_phase():
    args = ["--vidm-steps", "3000", "--still-fraction", "0.33", "--motion-ramp-fraction", "0.15"]
    vidm = [phase for phase in phases(parse_args(args)) if phase.stage == "vidm"]
    motion = [float(phase.overrides[-1].split("=")[1]) for phase in vidm]
    assert [phase.max_steps for phase in vidm] == [990, 1140, 1290, 1440, 3000]
    assert motion == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert all("max_decay_steps=3000" in phase.overrides[0] for phase in vidm), "one schedule"
    default = [phase for phase in phases(parse_args([])) if phase.stage == "vidm"]
    assert [(phase.max_steps, phase.overrides[-1][-3:]) for phase in default] == [(240, "0.0"), (3000, "1.0")]


def test_train_small_trains_the_decoder_alone_after_the_first_stage_unless_told_not_to():
    planned = phases(parse_args([]))
    assert [(phase.stage, phase.max_steps) for phase in planned[:3]] == [
        ("vq", 3600),
        ("vq", 4000),
        ("decoder", 3000),
    ]
    decoder = planned[2]
    assert "model.params.train_decoder_only=true" in decoder.overrides
    assert "data.params.train.params.crop=null" in decoder.overrides, "whole frames"
    skipped = [phase.stage for phase in phases(parse_args(["--decoder-steps", "0"]))]
    assert skipped[:2] == ["vq", "vq"] and "decoder" not in skipped


def test_train_small_refuses_to_start_without_the_wallpapers_unless_told(tmp_path, monkeypatch, capsys):
    """One error line and nothing written where the wallpapers are missing; --no-wallpapers trains on
    the scikit-image pictures and tabletop scenes alone, and the decoder and VIDM phases say so."""
    monkeypatch.setenv("VIDM_WALLPAPERS", str(tmp_path))
    assert train_small(["--logdir", str(tmp_path / "logs")]) == 1
    assert_one_error_line(capsys.readouterr().err, f"no wallpapers found in {tmp_path}", "--no-wallpapers")
    assert not (tmp_path / "logs").exists()
    for flags, scenes in (([], "true"), (["--no-wallpapers"], "false")):
        planned = phases(parse_args(flags))
        assert [f"data.params.train.params.wallpapers={scenes}" in phase.overrides for phase in planned] == [
            phase.stage != "vq" for phase in planned
        ]


@pytest.mark.slow
def test_train_small_runs_resumes_and_installs(tmp_path):
    """The documented training command with one step per phase (VQ on crops, then on whole frames;
    its decoder alone; VIDM with a still camera, then with motion): trains, converts, then skips
    every phase. The installed first stage is the VQ run's encoder with the decoder run's decoder.
    A generated picture stands in for Debian's wallpapers; the weights record the scene sources."""
    wallpapers = tmp_path / "wallpapers"
    wallpapers.mkdir()
    picture = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    cv2.imwrite(str(wallpapers / "noise.png"), cv2.GaussianBlur(picture, (9, 9), 3))
    env = {**os.environ, "VIDM_WALLPAPERS": str(wallpapers)}
    command = [
        sys.executable, str(ROOT / "scripts" / "train_small.py"), "--logdir", str(tmp_path / "logs"),
        "--vq-steps", "2", "--vq-whole-frame-steps", "1", "--decoder-steps", "1", "--vidm-steps", "2",
        "--still-fraction", "0.5", "--out", str(tmp_path / "model.safetensors"),
    ]  # fmt: skip
    first = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-2000:]
    installed = load_file(tmp_path / "model.safetensors")
    vq, decoder = (
        torch.load(next((tmp_path / "logs" / stage).glob("*/checkpoints/last.ckpt")), weights_only=True)[
            "state_dict"
        ]
        for stage in ("vq", "decoder")
    )
    for name in ("encoder.conv_in.weight", "decoder.conv_out.weight"):
        assert torch.equal(installed[f"first_stage_model.{name}"], decoder[name].half())
    assert torch.equal(vq["encoder.conv_in.weight"], decoder["encoder.conv_in.weight"])
    assert not torch.equal(vq["decoder.conv_out.weight"], decoder["decoder.conv_out.weight"])
    assert len(list((tmp_path / "logs").glob("*/*/checkpoints/last.ckpt"))) == 3
    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert again.returncode == 0 and again.stderr.count("finished") == 5, again.stderr[-2000:]
    scale = re.search(r"latent scale factor ([0-9.]+)", first.stderr).group(1)
    assert f"latent scale factor {scale}" in again.stderr, "a resumed run scales its latents the same way"
    for project in (tmp_path / "logs" / "vidm").glob("*/configs/*-project.yaml"):
        assert OmegaConf.load(project).model.params.scale_factor == pytest.approx(float(scale))
    model, _ = load_model(ModelChoice(SMALL_CONFIG, tmp_path / "model.safetensors", "trained"))
    assert model.scale_factor == pytest.approx(float(scale)), "the installed file samples as it was trained"
    with safe_open(tmp_path / "model.safetensors", "pt") as weights:
        scenes = json.loads(weights.metadata()["training_scenes"])
    assert scenes["wallpapers"]["count"] == 1 and scenes["wallpapers"]["folders"] == [str(wallpapers)]
    assert scenes["photos"] and scenes["procedural"] > 0
    shutil.rmtree(tmp_path / "logs")
