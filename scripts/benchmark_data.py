#!/usr/bin/env python
"""Measure NoHands throughput: samples per second in one process, i.e. per DataLoader worker.

Builds the training dataset from the `data:` section of the config (default the official one) with
the dataset locations from EPIC_ROOT, DATA_LOCATION and EGO4D_LOCATION. When they are not set, it
builds the miniature fixture of ldm/data/fixture_data.py in a temporary folder and reads that
(real VISOR annotations hold more objects per frame, so JSON parsing costs a little more there).
--profile adds where the time goes, grouped by stage.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from omegaconf import OmegaConf

from ldm.data.fixture_data import prepare_fixture_data
from ldm.util import instantiate_from_config

ENV_VARS = ("EPIC_ROOT", "DATA_LOCATION", "EGO4D_LOCATION")

# Stages, by the function that does the work (cProfile's name for it).
STAGES = {
    "HDF5 reads": ("h5py/_hl/dataset.py", "__getitem__"),
    "JPEG decode": ("~", "imdecode"),
    "resize": ("~", "resize"),
    "BGR to RGB": ("~", "cvtColor"),
    "JSON parse": ("json/__init__.py", "loads"),
    "polygon fill": ("~", "fillPoly"),
    "dilation": ("~", "dilate"),
    "random masks": ("ldm/data/masks.py", "__call__"),
    "float conversion": ("ldm/data/images.py", "to_model_range"),
    "whole sample": ("ldm/data/no_hands.py", "__getitem__"),
}


def stage_seconds(stats: pstats.Stats) -> dict[str, float]:
    """Cumulative seconds per stage (built-in functions are matched by name)."""
    totals = dict.fromkeys(STAGES, 0.0)
    for (filename, _, function), (_, _, _, cumulative, _) in stats.stats.items():
        for stage, (where, name) in STAGES.items():
            if filename == "~" == where and function.strip("<>{}").split(" ")[-1].split(".")[-1] == name:
                totals[stage] += cumulative
            elif where != "~" and function == name and filename.replace(os.sep, "/").endswith(where):
                totals[stage] += cumulative
    return totals


def build_dataset(config: Path, size: int, visor_files: str | None):
    data = OmegaConf.load(config).data
    params = data.params.train.params
    params.size = size
    params.visor_files = visor_files or params.visor_files
    if params.get("background_config") is not None:
        params.background_config.params.size = size
    return instantiate_from_config(data.params.train)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=Path("configs/inpaint_4frame.yaml"))
    parser.add_argument("--samples", type=int, default=300, help="samples to time")
    parser.add_argument("--size", type=int, default=256, help="sample size in pixels")
    parser.add_argument("--visor-files", help="override the config's visor_files (folder or .txt list)")
    parser.add_argument("--profile", action="store_true", help="also print the time per stage")
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)  # as in a DataLoader worker
    with tempfile.TemporaryDirectory() as tmp:
        visor_files = args.visor_files
        if not all(os.environ.get(v) for v in ENV_VARS):
            print("EPIC_ROOT/DATA_LOCATION/EGO4D_LOCATION not set: timing the miniature fixture")
            env = prepare_fixture_data(Path(tmp))
            os.environ.update(env)
            visor_files = visor_files or env["VISOR_TRAIN_LIST"]
        dataset = build_dataset(args.config, args.size, visor_files)
        indices = [int(i) for i in np.random.default_rng(0).integers(len(dataset), size=args.samples)]
        dataset[indices[0]]  # open the files
        start = time.perf_counter()
        for index in indices:
            dataset[index]
        rate = args.samples / (time.perf_counter() - start)
        print(f"NoHands at {args.size}px: {rate:.1f} samples/s per worker ({len(dataset)} items)")
        if args.profile:
            profiler = cProfile.Profile()
            profiler.runcall(lambda: [dataset[index] for index in indices])
            print("time per sample under the profiler, by stage:")
            for stage, spent in stage_seconds(pstats.Stats(profiler)).items():
                print(f"  {stage:18s} {1000 * spent / args.samples:6.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
