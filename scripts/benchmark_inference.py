#!/usr/bin/env python
"""Benchmark inference: demo and factorize wall times, and factorize's peak memory for short and long videos.

Runs demo_script.py and scripts/factorize.py as separate processes on synthetic frames with a tiny,
randomly initialised VIDM (32x32 pixels), so it finishes in minutes on a CPU. The figures measure the
pipeline around the model (reading, windows, sampling calls, compositing, writing, video assembly) and
whether memory grows with video length; they say nothing about the released model's speed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from omegaconf import OmegaConf

from ldm.util import instantiate_from_config

ROOT = Path(__file__).resolve().parents[1]

TINY_MODEL = {
    "target": "ldm.models.diffusion.latent_diffusion.LatentDiffusion",
    "params": {
        "linear_start": 0.0015,
        "linear_end": 0.0205,
        "timesteps": 1000,
        "first_stage_key": "image",
        "cond_stage_key": "__batch__",
        "image_size": 8,
        "channels": 3,
        "conditioning_key": "multi_concat",
        "unet_config": {
            "target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
            "params": {
                "dims": 3,
                "dim_join": {"type": "conv", "num": 4},
                "image_size": 8,
                "in_channels": 7,
                "out_channels": 3,
                "model_channels": 32,
                "attention_resolutions": [2],
                "num_res_blocks": 1,
                "channel_mult": [1, 2],
                "num_heads": 4,
                "resblock_updown": True,
            },
        },
        "first_stage_config": {
            "target": "ldm.models.autoencoder.VQModelInterface",
            "params": {
                "embed_dim": 3,
                "n_embed": 64,
                "ddconfig": {
                    "attn_type": "none",
                    "double_z": False,
                    "z_channels": 3,
                    "resolution": 32,
                    "in_channels": 3,
                    "out_ch": 3,
                    "ch": 32,
                    "ch_mult": [1, 2, 2],
                    "num_res_blocks": 1,
                    "attn_resolutions": [],
                    "dropout": 0.0,
                },
                "lossconfig": {"target": "ldm.modules.losses.contperceptual.DummyLoss"},
            },
        },
        "cond_stage_config": {
            "target": "ldm.models.cond.Inpainting3d",
            "with_first_stage": True,
            "params": {"multi_img": True},
        },
    },
}


def write_tiny_model(folder: Path) -> list[str]:
    """A random tiny VIDM as config + checkpoint; returns the --config/--checkpoint arguments."""
    torch.manual_seed(0)
    model = instantiate_from_config(TINY_MODEL)
    config, checkpoint = folder / "tiny.yaml", folder / "tiny.ckpt"
    OmegaConf.save(OmegaConf.create({"model": TINY_MODEL}), config)
    torch.save({"state_dict": model.state_dict()}, checkpoint)
    return ["--config", str(config), "--checkpoint", str(checkpoint)]


def synthetic_frame(index: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A blurred-noise RGB frame that drifts with `index`, and an elliptical 0/255 'hand' mask."""
    rng = np.random.default_rng(index // 10)
    coarse = rng.integers(0, 256, (height // 16 + 2, width // 16 + 2, 3), dtype=np.uint8)
    frame = cv2.resize(coarse, (width + 32, height), interpolation=cv2.INTER_CUBIC)
    shift = index % 32
    mask = np.zeros((height, width), np.uint8)
    centre = (width // 3 + (index * 3) % (width // 3), height)
    cv2.ellipse(mask, centre, (width // 8, height // 2), 20, 0, 360, 255, -1)
    return frame[:, shift : shift + width], mask


def write_frames(
    folder: Path, count: int, height: int, width: int, suffix: str = ".jpg"
) -> tuple[Path, Path]:
    frames, masks = folder / "frames", folder / "masks"
    frames.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        frame, mask = synthetic_frame(index, height, width)
        cv2.imwrite(str(frames / f"{index:05d}{suffix}"), frame)
        cv2.imwrite(str(masks / f"{index:05d}.png"), mask)
    return frames, masks


def run_measured(args: list[str]) -> tuple[float, float]:
    """Run a project script; (wall seconds, peak resident memory in MiB) of that process."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"benchmark run failed: {' '.join(args)}\n{stderr.decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--lengths", type=int, nargs="+", default=[50, 500], help="video lengths for factorize"
    )
    parser.add_argument("--size", default="640x360", help="factorize frame size WxH (default 640x360)")
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps for factorize (default 10)")
    parser.add_argument("--demo-steps", type=int, default=200, help="DDIM steps for the demo (default 200)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one, removed after)")
    return parser.parse_args()


def benchmark(args: argparse.Namespace, work: Path) -> None:
    model = write_tiny_model(work)
    width, height = (int(v) for v in args.size.split("x"))
    print(f"tiny VIDM (32x32 pixels), CPU, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')}")

    demo = work / "demo"
    write_frames(demo, 4, 256, 256)
    (demo / "frames").rename(demo / "raw")
    seconds, peak = run_measured(
        [
            "demo_script.py",
            str(demo),
            "--out",
            str(work / "output.png"),
            "--device",
            "cpu",
            "--steps",
            str(args.demo_steps),
            *model,
        ]
    )
    print(f"demo, 4 frames, {args.demo_steps} DDIM steps: {seconds:.1f} s, peak RSS {peak:.0f} MiB")

    for length in args.lengths:
        frames, masks = write_frames(work / f"video{length}", length, height, width)
        out = work / f"out{length}"
        common = ["scripts/factorize.py", "--frames", str(frames), "--masks", str(masks), "--out", str(out)]
        options = [
            "--device",
            "cpu",
            "--steps",
            str(args.steps),
            "--batch-size",
            str(args.batch_size),
            "--frame-skip",
            "36",
            *model,
        ]
        seconds, peak = run_measured([*common, *options])
        print(
            f"factorize, {length} frames {width}x{height}, {args.steps} DDIM steps, batch {args.batch_size}: "
            f"{seconds:.1f} s ({length / seconds:.1f} frames/s), peak RSS {peak:.0f} MiB"
        )
        seconds, _ = run_measured([*common, *options])
        print(f"factorize rerun, {length} frames, nothing left to do: {seconds:.1f} s")


def main() -> None:
    args = parse_args()
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
        benchmark(args, args.work)
        return
    with tempfile.TemporaryDirectory(prefix="vidm_benchmark_") as work:
        benchmark(args, Path(work))


if __name__ == "__main__":
    main()
