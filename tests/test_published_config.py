"""The published configs/inpaint_4frame.yaml, read in place: its data section on the miniature data.

Only paths (the three environment variables and the VISOR list files), the batch size and the
worker count are overridden, as a user who downloaded the data would.
"""

from __future__ import annotations

import pytest
import torch

from ldm.training.runs import check_resolvable, load_configs
from ldm.util import instantiate_from_config
from tests.conftest import ROOT, read_tsv
from tests.data_fixture import shared_fixture_data

PUBLISHED_CONFIG = ROOT.parent / "shared" / "reference" / "published_inpaint_4frame.yaml"
SPLIT_LISTS = {"train": "VISOR_TRAIN_LIST", "validation": "VISOR_VAL_LIST", "test": "VISOR_VAL_LIST"}

pytestmark = pytest.mark.skipif(
    not PUBLISHED_CONFIG.is_file(), reason=f"published config not found at {PUBLISHED_CONFIG}"
)


@pytest.fixture(scope="module")
def data_env(tmp_path_factory) -> dict[str, str]:
    return shared_fixture_data(tmp_path_factory)


@pytest.fixture()
def published_data(data_env, monkeypatch):
    """The published data module with the paths, batch size and workers overridden."""
    for name in ("EPIC_ROOT", "DATA_LOCATION", "EGO4D_LOCATION"):
        monkeypatch.setenv(name, data_env[name])
    overrides = [f"data.params.{split}.params.visor_files={data_env[v]}" for split, v in SPLIT_LISTS.items()]
    overrides += ["data.params.batch_size=2", "data.params.num_workers=0"]
    config = load_configs([str(PUBLISHED_CONFIG)], overrides)  # as `main.py --base FILE key=value`
    check_resolvable(config, [str(PUBLISHED_CONFIG)])
    return instantiate_from_config(config.data)


def test_published_data_section_draws_a_batch_from_every_split(published_data):
    published_data.setup("fit")
    published_data.setup("test")
    train = next(iter(published_data.train_dataloader()))
    assert train["image"].shape == (2, 256, 256, 3)
    assert train["hand_images"].shape == (2, 4, 256, 256, 3)  # stack_frames: False
    assert train["mask"].shape == (2, 4, 256, 256) and train["loss_mask"].shape == (2, 64, 64)
    assert train["loss_mask"].dtype == torch.bool
    assert (train["hand_images"][train["mask"] > 0] == -1).all()
    validation = next(iter(published_data.val_dataloader()))
    assert validation["hand_images"].shape == (2, 4, 256, 256, 3)
    test = next(iter(published_data.test_dataloader()))
    assert test["video"] == ["P37_102", "P37_102"] and test["frame_nums"].shape == (2, 4)
    assert (test["mask"] > 0).flatten(1).any(dim=1).all()  # hand_mask_rate 1: every window's hands masked
    # Both NoHands splits of the published file keep the EGO4D backgrounds: 5 windows on the fixture.
    for split in ("train", "validation"):
        assert len(published_data.datasets[split].background) == 5


def test_model_section_builds_the_released_1220_key_model():
    """Its model section, unchanged, builds the model whose state dict the released checkpoint holds."""
    config = load_configs([str(PUBLISHED_CONFIG)], [])
    with torch.device("meta"):
        model = instantiate_from_config(config.model)
    layout = [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()]
    assert layout == read_tsv("state_dict_vidm_4frame.tsv")


def test_initializer_section_is_applied_through_init():
    """The published code calls `initializer.init(model)`; the initializer it names has that method."""
    config = load_configs([str(PUBLISHED_CONFIG)], [])
    initializer = instantiate_from_config(config.initializer)
    assert callable(initializer.init)
