"""The miniature EPIC/VISOR/EGO4D data of scripts/make_fixture_data.py, built once per test session.

`shared_fixture_data(tmp_path_factory)` returns the environment variables that
`configs/inpaint_4frame.yaml` reads, plus VISOR_TRAIN_LIST / VISOR_VAL_LIST for the config's
`visor_files`, e.g. `data.params.train.params.visor_files=<list>`. Call it from a session fixture
of your own:

    @pytest.fixture(scope="session")
    def data_env(tmp_path_factory):
        return shared_fixture_data(tmp_path_factory)

EGO4D frames are labelled by `MarkerHandDetector`, which stands in for the detectron2 hand detector
(detectron2 and its weights cannot be installed here).
"""

from __future__ import annotations

import pytest

from scripts.make_fixture_data import prepare_fixture_data

ENV_FILE = "fixture_env.txt"


def shared_fixture_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """`prepare_fixture_data` run once per test session (later calls reuse it)."""
    root = tmp_path_factory.getbasetemp() / "vidm_fixture_data"
    done = root / ENV_FILE
    if not done.exists():
        env = prepare_fixture_data(root)
        done.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    return dict(line.split("=", 1) for line in done.read_text().splitlines())
