"""Helpers shared by the inference tests (test_inference*, test_demo*, test_factorize*); no tests here.

The released weights (6.4 GB) are not available to the tests: every model below is the reference's
small VIDM (32x32 pixels, 8x8 latents) with its randomly initialised weights, written as a config
and a Lightning-style checkpoint into the test's temporary folder.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import ROOT

ORIGINAL_DEMO = ROOT.parent / "shared" / "reference" / "original_demo_data"
"""The published demo's 4 EPIC-KITCHENS frames (never copied into the project)."""


def write_small_model(folder: Path, reference: dict) -> tuple[Path, Path]:
    """(config, checkpoint) of the randomly initialised small VIDM."""
    folder.mkdir(parents=True, exist_ok=True)
    config, checkpoint = folder / "small.yaml", folder / "small.ckpt"
    OmegaConf.save(OmegaConf.create({"model": reference["config"]}), config)
    torch.save({"state_dict": reference["state_dict"]}, checkpoint)
    return config, checkpoint


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """One intra-op thread: on a small shared CPU, tiny convolutions are much faster this way."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def scene(index: int, height: int, width: int) -> np.ndarray:
    """A smooth RGB frame (a gradient that pans with `index`) with a little texture."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(index)
    channels = [
        120 + 80 * np.sin((x + 2 * index) / 9.0),
        120 + 80 * np.cos(y / 7.0),
        100 + 60 * np.sin((x + y + index) / 11.0),
    ]
    frame = np.stack(channels, axis=-1) + rng.normal(0, 4, (height, width, 3))
    return np.clip(frame, 0, 255).astype(np.uint8)


def hand_mask(index: int, height: int, width: int) -> np.ndarray:
    """A 0/255 mask: a bar rising from the lower edge that moves right with `index`."""
    mask = np.zeros((height, width), np.uint8)
    left = (width // 5 + index * max(1, width // 20)) % (width // 2)
    mask[height // 2 :, left : left + width // 4] = 255
    return mask


def write_sequence(
    folder: Path,
    count: int,
    height: int,
    width: int,
    mask_size: tuple[int, int] | None = None,
    mask_channels: int = 1,
) -> tuple[Path, Path]:
    """frames/%03d.png and masks/%03d.png (masks at `mask_size` (h, w), default the frame size)."""
    frames, masks = folder / "frames", folder / "masks"
    frames.mkdir(parents=True)
    masks.mkdir(parents=True)
    mask_height, mask_width = mask_size or (height, width)
    for index in range(count):
        cv2.imwrite(
            str(frames / f"{index:03d}.png"), cv2.cvtColor(scene(index, height, width), cv2.COLOR_RGB2BGR)
        )
        mask = hand_mask(index, mask_height, mask_width)
        if mask_channels == 3:
            mask = np.dstack([mask] * 3)
        cv2.imwrite(str(masks / f"{index:03d}.png"), mask)
    return frames, masks


def read_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, path
    if image.ndim == 2:
        return image
    return cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA if image.shape[2] == 4 else cv2.COLOR_BGR2RGB)


def run_script(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Run a project script in a fresh interpreter (one thread per process)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def help_text(main: Callable[[list[str]], int]) -> str:
    """What a command's `--help` prints (it must exit with status 0)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    return buffer.getvalue()


def assert_one_error_line(stderr: str, *fragments: str) -> None:
    """stderr holds exactly one line, an 'error: ...' that names every fragment, and no traceback."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
