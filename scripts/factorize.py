#!/usr/bin/env python
"""Factorise egocentric video into environment (hands inpainted) and agent (hand masks and pixels).

Every frame t is inpainted with frames t-3k, t-2k and t-k as context (k = --frame-skip; frames
before the first are clamped to it). The model saw 4 frames spaced 36 frames apart in training,
on EPIC-KITCHENS frames (about 60 fps, 59.94, for the EPIC-KITCHENS-55 recordings and 50 fps for
the EPIC-KITCHENS-100 extension), i.e. about 0.6-0.7 s apart. The default k = 36 keeps that spacing
for such footage; for other frame rates use about 0.65 s x fps (e.g. 20 at 30 fps).

Outputs, at the input resolution, in OUT: masks/%05d.png, agent/%05d.png (RGBA), environment/%05d.png,
environment.mp4 and preview.mp4 (input | environment). A rerun skips frames already written and
reassembles the videos when they are missing or older than a frame. The run's summary (frames
written, skipped, failed and why, frames/s per process) goes to OUT/factorize_summary.json, or
LIST.summary.json beside a --list file, and into the last line of the log.

Several nodes: launch the same command on every node under torchrun or SLURM (they set each
process's rank), with --num-nodes N and --devices per node, all nodes writing to shared storage; the
frames are shared out over every process of every node. After a lost node, run the same command on
every node again: it does only what is missing.

    torchrun --nnodes 2 --nproc-per-node 4 --node-rank $NODE_RANK --master-addr $HOST --master-port 29500 \
        scripts/factorize.py --list videos.txt --num-nodes 2 --devices 4
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ldm.inference.cli import (
    add_model_arguments,
    add_sampling_arguments,
    device_and_dtype,
    positive_int,
    run_command,
    sampling_settings,
    setup_logging,
)
from ldm.inference.factorize import FactorizeOptions, factorize
from ldm.inference.jobs import DEFAULT_FPS, FactorizeJob, read_job_list
from ldm.inference.model import choose_model
from ldm.util import InputError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--frames", type=Path, help="folder of frames (jpg/png/bmp, natural sort order)")
    source.add_argument("--video", type=Path, help="video file (mp4, ... read through ffmpeg)")
    source.add_argument(
        "--list",
        type=Path,
        help="many videos: a text file with one 'SOURCE MASKS OUT' per line (SOURCE a frames folder or "
        "video; paths relative to the list file)",
    )
    parser.add_argument(
        "--masks", type=Path, help="folder with one mask per frame (1 or 3 channels, any size)"
    )
    parser.add_argument("--out", type=Path, help="output folder")
    parser.add_argument(
        "--frame-skip", type=positive_int, default=36, help="k: context frames t-3k, t-2k, t-k (default 36)"
    )
    parser.add_argument(
        "--dilation",
        type=int,
        default=7,
        help="dilate the masks with a square of this many pixels at a 256-pixel short side, scaled to the frame (default 7)",
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=4, help="frames per model call (default 4)"
    )
    parser.add_argument(
        "--fps",
        type=float,
        help=f"frame rate of the output videos (default: the video's, or {DEFAULT_FPS:g} for frames)",
    )
    parser.add_argument(
        "--devices",
        type=positive_int,
        default=1,
        help="spread the frames over this many devices (processes) per node with DDP (default 1)",
    )
    parser.add_argument(
        "--num-nodes",
        type=positive_int,
        default=1,
        help="nodes taking part, each launched by torchrun or SLURM with the same command (default 1)",
    )
    parser.add_argument(
        "--summary",
        type=Path,
        help="where the run's JSON summary goes (default OUT/factorize_summary.json, or "
        "LIST.summary.json beside a --list file)",
    )
    add_model_arguments(parser)
    add_sampling_arguments(parser)
    args = parser.parse_args(argv)
    if args.list is None and (args.masks is None or args.out is None):
        parser.error("--masks and --out are required with --frames or --video")
    if args.list is not None and (args.masks is not None or args.out is not None):
        parser.error("--masks and --out come from the list file with --list")
    if args.dilation < 0:
        parser.error("--dilation must be at least 0")
    if args.fps is not None and args.fps <= 0:
        parser.error("--fps must be positive")
    return args


LAUNCHER_VARIABLES = ("WORLD_SIZE", "SLURM_NTASKS", "NODE_RANK")
"""One of these is set where a launcher started the process: torchrun, SLURM, or by hand for Lightning."""


def check_launcher(num_nodes: int) -> None:
    """Several nodes need a launcher on each of them: without one, the run would wait for nodes that
    never come."""
    if num_nodes > 1 and not any(name in os.environ for name in LAUNCHER_VARIABLES):
        raise InputError(
            f"--num-nodes {num_nodes}: no launcher started this process (none of {', '.join(LAUNCHER_VARIABLES)} "
            "is set); run the command on every node under torchrun or srun (see --help)"
        )


def run(args: argparse.Namespace) -> None:
    check_launcher(args.num_nodes)
    device, dtype = device_and_dtype(args)
    if args.list is not None:
        entries = read_job_list(args.list)
    else:
        entries = [(args.frames or args.video, args.masks, args.out)]
    jobs = [FactorizeJob.open(source, masks, out, args.fps) for source, masks, out in entries]
    choice = choose_model(args.checkpoint, args.config)
    options = FactorizeOptions(
        frame_skip=args.frame_skip,
        dilation=args.dilation,
        batch_size=args.batch_size,
        settings=sampling_settings(args, choice.config),
        eta=args.eta,
        seed=args.seed,
        resolution=args.resolution,
        dtype=dtype,
        device=device,
        devices=args.devices,
        num_nodes=args.num_nodes,
        unsafe_load=args.unsafe_load,
    )
    summary_path = args.summary or default_summary_path(args)
    summary = factorize(jobs, choice, options, summary_path)
    if summary is not None and summary.failures:
        first, others = summary.failures[0], len(summary.failures) - 1
        more = f" (and {others} more video{'s' if others > 1 else ''})" if others else ""
        raise InputError(f"{first.error}{more}; {summary.failed} frames not written, see {summary_path}")


def default_summary_path(args: argparse.Namespace) -> Path:
    if args.list is not None:
        return args.list.with_name(f"{args.list.stem}.summary.json")
    return args.out / "factorize_summary.json"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    return run_command(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
