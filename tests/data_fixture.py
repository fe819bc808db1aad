"""Miniature EPIC/VISOR/EGO4D data, preprocessed by the real scripts, for data and training tests.

`prepare_fixture_data(root)` (from scripts/make_fixture_data.py) builds everything under `root` in a
few seconds and returns the environment variables that `configs/inpaint_4frame.yaml` reads, plus
VISOR_TRAIN_LIST / VISOR_VAL_LIST for the config's `visor_files`, e.g.
`data.params.train.params.visor_files=<list>`. `shared_fixture_data(tmp_path_factory)` builds it
once per test session; call it from a session fixture of your own:

    @pytest.fixture(scope="session")
    def data_env(tmp_path_factory):
        return shared_fixture_data(tmp_path_factory)

EGO4D frames are labelled by `MarkerHandDetector`, which stands in for the detectron2 hand detector
(detectron2 and its weights cannot be installed here).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
ENV_FILE = "fixture_env.txt"


def _load_fixture_script():
    name = "vidm_scripts.make_fixture_data"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SCRIPTS / "make_fixture_data.py")
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


fixture = _load_fixture_script()
load_script = fixture.load_script
prepare_fixture_data = fixture.prepare_fixture_data
RAW_DIR = fixture.RAW_DIR


def shared_fixture_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """`prepare_fixture_data` run once per test session (later calls reuse it)."""
    root = tmp_path_factory.getbasetemp() / "vidm_fixture_data"
    done = root / ENV_FILE
    if not done.exists():
        env = prepare_fixture_data(root)
        done.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    return dict(line.split("=", 1) for line in done.read_text().splitlines())
