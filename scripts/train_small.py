#!/usr/bin/env python
"""Train the embedded small VIDM from scratch and install it as models/vidm_small/vidm_small.safetensors.

main.py runs on synthetic sequences (ldm.data.synthetic.sequences), then a conversion:
  1. the VQ f4 first stage on whole frames (configs/vq_f4_small.yaml), then its decoder alone
     (encoder and codebook fixed) on whole frames of all the training scenes, wallpapers included,
  2. the 4-frame VIDM on top of it (configs/vidm_small.yaml), its latents scaled to unit variance
     (LDM's scale_by_std: one over the std of the new first stage's latents on training frames),
     in phases of one run: first with a
     still camera (a hidden pixel is copied from the same place in a context frame), optionally with
     the camera motion ramped up in steps (--motion-ramp-fraction), then with the full head-mounted
     motion,
  3. EMA weights + first stage → safetensors, stored in float16 (--fp32 keeps float32), recording
     the latent scale factor (loading the file uses it instead of the config's) and the scene sources.
The training scenes include Debian's wallpapers, as the shipped weights were trained: `make
wallpapers` installs them, and the command refuses to start without them unless --no-wallpapers
says to train on the scikit-image pictures and tabletop scenes alone.
Each phase resumes if its run directory holds an unfinished checkpoint and is skipped when it is
finished, so rerunning the command after an interruption continues where it stopped. Training uses
bf16-mixed precision where the hardware computes bf16 natively (--precision auto), else fp32.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from ldm.data.synthetic.scenes import scene_sources
from ldm.data.synthetic.sequences import SyntheticFrames
from ldm.inference.device import native_bf16
from ldm.training.trainer import parse_gpus
from ldm.util import instantiate_from_config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scripts.convert_checkpoint import main as convert  # noqa: E402

log = logging.getLogger("train_small")
VIDM_CONFIG = "configs/vidm_small.yaml"
VQ_CONFIG = "configs/vq_f4_small.yaml"
DECODER_OVERRIDES = (
    "model.params.train_decoder_only=true",
    "model.base_learning_rate=1.25e-05",  # 2e-4 at batch 16
    "data.params.train.params.crop=null",
)
"""The decoder phase: the first stage's decoder alone, on whole frames of every training scene."""
DECODER_STEPS = 3000
SCENES_KEY = "training_scenes"
"""Metadata key of the installed weights: the scene sources the run trained on (JSON)."""


@dataclass(frozen=True)
class Phase:
    stage: str
    config: str
    max_steps: int
    overrides: tuple[str, ...] = ()


def phases(args: argparse.Namespace) -> list[Phase]:
    still = int(args.vidm_steps * args.still_fraction)
    schedule = "model.params.scheduler_config.params"
    warm_up = min(args.warm_up_steps, args.vidm_steps // 10)  # a short trial run still decays
    decay = (f"{schedule}.max_decay_steps={args.vidm_steps}", f"{schedule}.warm_up_steps={warm_up}")
    motion = "data.params.train.params.motion_scale"
    ramp = int(args.vidm_steps * args.motion_ramp_fraction)
    parts = args.motion_ramp_phases if ramp > 0 else 0
    motion_ends = [(still, 0.0)]
    motion_ends += [(still + ramp * i // parts, i / (parts + 1)) for i in range(1, parts + 1)]
    motion_ends += [(args.vidm_steps, 1.0)]
    scenes = f"data.params.train.params.wallpapers={str(not args.no_wallpapers).lower()}"
    vidm = [
        Phase("vidm", VIDM_CONFIG, end, (*decay, scenes, f"{motion}={scale}")) for end, scale in motion_ends
    ]
    vq = [
        Phase("vq", VQ_CONFIG, args.vq_steps - args.vq_whole_frame_steps),
        Phase("vq", VQ_CONFIG, args.vq_steps, ("data.params.train.params.crop=null",)),
        Phase("decoder", VQ_CONFIG, args.decoder_steps, (*DECODER_OVERRIDES, scenes)),
    ]
    return [p for p in (*vq, *vidm) if p.max_steps > 0]


def latent_scale_factor(vq_checkpoint: Path, wallpapers: bool, frames: int = 256) -> float:
    """One over the std of the first stage's latents on training frames (LDM's scale_by_std), so that
    the VIDM stage sees unit-variance latents whatever first stage this run trained."""
    config = OmegaConf.load(REPO / VIDM_CONFIG).model.params.first_stage_config
    config.params.ckpt_path = str(vq_checkpoint)
    first_stage = instantiate_from_config(config).eval()
    size = config.params.ddconfig.resolution
    data = SyntheticFrames(size=size, length=frames, split="train", seed=0, wallpapers=wallpapers)
    images = torch.from_numpy(np.stack([data[i]["image"] for i in range(frames)])).permute(0, 3, 1, 2)
    with torch.inference_mode():
        latents = torch.cat([first_stage.encode(batch) for batch in images.split(64)])
    return round(1.0 / latents.std().item(), 3)


def first_stage_overrides(last: dict[str, Path], scale: float) -> list[str]:
    """The VIDM phases' first stage (with the fine-tuned decoder when there is one) and latent scale."""
    checkpoint = last.get("decoder", last["vq"])
    log.info("first stage %s: latent scale factor %.3f", checkpoint, scale)
    return [
        f"model.params.first_stage_config.params.ckpt_path={checkpoint}",
        f"model.params.scale_factor={scale}",
    ]


def run_dir(logdir: Path, stage: str) -> Path | None:
    """The stage's run directory under logdir/stage (main.py names it <timestamp>_<name>)."""
    runs = sorted((logdir / stage).glob(f"*_{stage}_small"))
    return runs[-1] if runs else None


def finished_step(checkpoint: Path) -> int:
    return int(torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True).get("global_step", 0))


def train_phase(phase: Phase, logdir: Path, extra: list[str]) -> Path:
    """Run (or resume, or skip) one main.py training phase; returns its last.ckpt."""
    existing = run_dir(logdir, phase.stage)
    last = existing / "checkpoints" / "last.ckpt" if existing else None
    overrides = [f"lightning.trainer.max_steps={phase.max_steps}", *phase.overrides, *extra]
    if last is not None and last.is_file():
        if finished_step(last) >= phase.max_steps:
            log.info("%s to step %d: finished (%s)", phase.stage, phase.max_steps, last)
            return last
        command = ["--resume", str(existing), "-t", *overrides]
    else:
        name = ["-n", f"{phase.stage}_small", "--logdir", str(logdir / phase.stage)]
        command = ["--base", str(REPO / phase.config), "-t", "--no-test", *name, *overrides]
    log.info("%s: python main.py %s", phase.stage, " ".join(command))
    subprocess.run([sys.executable, str(REPO / "main.py"), *command], cwd=REPO, check=True)
    return run_dir(logdir, phase.stage) / "checkpoints" / "last.ckpt"


def precision(choice: str, gpus: str | None) -> str:
    """Lightning's precision for --precision: auto is bf16-mixed where the first device used (the
    CPU, or the first of --gpus; GPU 0 for -1, every GPU) computes bf16 natively, else 32-true."""
    if choice != "auto":
        return choice
    device = torch.device("cpu")
    if gpus:
        indices = parse_gpus(gpus)
        device = torch.device("cuda", 0 if indices == -1 else indices[0])
    return "bf16-mixed" if native_bf16(device) else "32-true"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--logdir", type=Path, default=REPO / "logs" / "small", help="where the runs go")
    parser.add_argument(
        "--vq-steps", type=int, default=4000, help="first-stage training steps (default 4000)"
    )
    parser.add_argument(
        "--vq-whole-frame-steps", type=int, default=400, help="the last of them on whole frames (default 400)"
    )
    parser.add_argument(
        "--decoder-steps",
        type=int,
        default=DECODER_STEPS,
        help=f"then the decoder alone (encoder and codebook fixed), on whole frames ({DECODER_STEPS})",
    )
    parser.add_argument("--vidm-steps", type=int, default=3000, help="VIDM training steps (default 3000)")
    parser.add_argument(
        "--warm-up-steps", type=int, default=160, help="linear LR warm-up, at most a tenth of them (160)"
    )
    parser.add_argument(
        "--still-fraction", type=float, default=0.08, help="share of VIDM steps with a still camera (0.08)"
    )
    parser.add_argument(
        "--motion-ramp-fraction",
        type=float,
        default=0.0,
        help="share of VIDM steps after the still phase over which the camera motion grows to full (0)",
    )
    parser.add_argument(
        "--motion-ramp-phases", type=int, default=3, help="motion steps of that ramp: 1/4, 2/4, 3/4 for 3 (3)"
    )
    parser.add_argument(
        "--no-wallpapers",
        action="store_true",
        help="train without Debian's wallpapers (the shipped weights saw them; `make wallpapers` installs them)",
    )
    parser.add_argument("--seed", type=int, default=23, help="main.py's random seed (23)")
    parser.add_argument("--precision", default="auto", help="auto (default), bf16-mixed or 32-true")
    parser.add_argument("--gpus", help="GPU indices for main.py (default: CPU)")
    parser.add_argument("--out", type=Path, default=REPO / "models" / "vidm_small" / "vidm_small.safetensors")
    parser.add_argument(
        "--fp32", action="store_true", help="store the installed weights in float32 (default float16)"
    )
    return parser.parse_args(argv)


def training_scenes(args: argparse.Namespace) -> str | None:
    """The scene sources (JSON) this run trains on, or None, with an error line, where the wallpapers
    it needs are not installed."""
    try:
        sources = scene_sources(use_wallpapers=not args.no_wallpapers)
    except FileNotFoundError as err:
        print(f"error: {err}, or pass --no-wallpapers to train without them", file=sys.stderr)
        return None
    log.info("training scenes: %s", sources)
    return sources


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sources = training_scenes(args)
    if sources is None:
        return 1
    extra = ["--seed", str(args.seed), f"lightning.trainer.precision={precision(args.precision, args.gpus)}"]
    if args.gpus:
        extra = ["--gpus", args.gpus, *extra]
    last: dict[str, Path] = {}
    scale: float | None = None
    for phase in phases(args):
        inputs = []
        if phase.stage == "decoder":
            inputs = [f"model.params.ckpt_path={last['vq']}"]
        if phase.stage == "vidm":
            scale = scale if scale is not None else latent_scale_factor(last["vq"], not args.no_wallpapers)
            inputs = first_stage_overrides(last, scale)
        last[phase.stage] = train_phase(phase, args.logdir, [*extra, *inputs])
    recorded = ["--metadata", f"{SCENES_KEY}={sources}", *([] if args.fp32 else ["--fp16"])]
    return convert([str(last["vidm"]), str(args.out), *recorded])


if __name__ == "__main__":
    sys.exit(main())
