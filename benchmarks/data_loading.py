#!/usr/bin/env python
"""NoHands training samples per second in one process: the real data when EPIC_ROOT, DATA_LOCATION
and EGO4D_LOCATION are set, else the miniature fixture."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import OFFICIAL, ROOT, worker_main  # noqa: E402
from ldm.util import instantiate_from_config  # noqa: E402
from scripts.make_fixture_data import prepare_fixture_data  # noqa: E402


def measure(samples: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        data = OmegaConf.load(ROOT / OFFICIAL).data
        source = "EPIC/VISOR/EGO4D"
        if not all(os.environ.get(v) for v in ("EPIC_ROOT", "DATA_LOCATION", "EGO4D_LOCATION")):
            env = prepare_fixture_data(Path(tmp))
            os.environ.update(env)
            data.params.train.params.visor_files = env["VISOR_TRAIN_LIST"]
            source = "miniature fixture"
        dataset = instantiate_from_config(data.params.train)
        indices = np.random.default_rng(0).integers(len(dataset), size=samples)
        dataset[int(indices[0])]
        start = time.perf_counter()
        for index in indices:
            dataset[int(index)]
        return {"source": source, "samples_per_s": samples / (time.perf_counter() - start)}


if __name__ == "__main__":
    sys.exit(worker_main(measure))
