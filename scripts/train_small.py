#!/usr/bin/env python
"""Train the embedded small VIDM from scratch and install it as models/vidm_small/vidm_small.safetensors.

Two main.py runs on synthetic sequences (ldm.data.synthetic), then a conversion:
  1. the VQ f4 first stage (configs/vq_f4_small.yaml),
  2. the 4-frame VIDM on top of it (configs/vidm_small.yaml),
  3. EMA weights + first stage → safetensors, stored in float16 (15.7 MB; --fp32 keeps float32, 31 MB).
Each stage resumes if its run directory holds an unfinished checkpoint, and is skipped when it is
finished, so rerunning the command after an interruption continues where it stopped.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scripts.convert_checkpoint import main as convert  # noqa: E402

log = logging.getLogger("train_small")
STAGES = (("vq", "configs/vq_f4_small.yaml"), ("vidm", "configs/vidm_small.yaml"))


def run_dir(logdir: Path, stage: str) -> Path | None:
    """The stage's run directory under logdir/stage (main.py names it <timestamp>_<name>)."""
    runs = sorted((logdir / stage).glob(f"*_{stage}_small"))
    return runs[-1] if runs else None


def finished_step(checkpoint: Path) -> int:
    return int(torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True).get("global_step", 0))


def train_stage(stage: str, config: str, logdir: Path, max_steps: int, extra: list[str]) -> Path:
    """Run (or resume, or skip) one main.py training; returns its last.ckpt."""
    existing = run_dir(logdir, stage)
    last = existing / "checkpoints" / "last.ckpt" if existing else None
    overrides = [f"lightning.trainer.max_steps={max_steps}", *extra]
    if last is not None and last.is_file():
        if finished_step(last) >= max_steps:
            log.info("%s: finished (%s)", stage, last)
            return last
        command = ["--resume", str(existing), "-t", *overrides]
    else:
        command = [
            "--base",
            str(REPO / config),
            "-t",
            "--no-test",
            "--logdir",
            str(logdir / stage),
            "-n",
            f"{stage}_small",
            *overrides,
        ]
    log.info("%s: python main.py %s", stage, " ".join(command))
    subprocess.run([sys.executable, str(REPO / "main.py"), *command], cwd=REPO, check=True)
    return run_dir(logdir, stage) / "checkpoints" / "last.ckpt"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--logdir", type=Path, default=REPO / "logs" / "small", help="where the two runs go")
    parser.add_argument(
        "--vq-steps", type=int, default=4000, help="first-stage training steps (default 4000)"
    )
    parser.add_argument("--vidm-steps", type=int, default=3000, help="VIDM training steps (default 3000)")
    parser.add_argument("--gpus", help="GPU indices for main.py (default: CPU)")
    parser.add_argument("--out", type=Path, default=REPO / "models" / "vidm_small" / "vidm_small.safetensors")
    parser.add_argument(
        "--fp32", action="store_true", help="store the installed weights in float32 (default float16)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    gpus = ["--gpus", args.gpus] if args.gpus else []
    vq = train_stage("vq", STAGES[0][1], args.logdir, args.vq_steps, gpus)
    vidm = train_stage(
        "vidm",
        STAGES[1][1],
        args.logdir,
        args.vidm_steps,
        [*gpus, f"model.params.first_stage_config.params.ckpt_path={vq}"],
    )
    return convert([str(vidm), str(args.out), *([] if args.fp32 else ["--fp16"])])


if __name__ == "__main__":
    sys.exit(main())
