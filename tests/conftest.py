"""Shared fixtures: the numerical reference of the published implementation and config helpers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ldm.util import instantiate_from_config

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def reference() -> dict:
    """vidm_small_reference.pt: config, weights and outputs computed with the published code."""
    return torch.load(FIXTURES / "vidm_small_reference.pt", weights_only=False)


def reference_config(reference: dict, **params) -> dict:
    """The reference's model config with its params updated with `params`."""
    return {**reference["config"], "params": {**reference["config"]["params"], **params}}


def reference_model(reference: dict, **params) -> torch.nn.Module:
    """The reference's small VIDM (its model params updated with `params`) with the reference
    weights, in eval mode."""
    model = instantiate_from_config(reference_config(reference, **params))
    model.load_state_dict(reference["state_dict"], strict=True)
    return model.eval()


@pytest.fixture()
def small_model(reference):
    """The reference's small VIDM with the reference weights, in eval mode."""
    return reference_model(reference)


def read_tsv(name: str) -> list[tuple[str, tuple[int, ...], str]]:
    rows = []
    for line in (FIXTURES / name).read_text().splitlines():
        key, shape, dtype = line.split("\t")
        rows.append((key, tuple(int(s) for s in shape.strip("()").split(",") if s.strip()), dtype))
    return rows


def official_model_config():
    return OmegaConf.load(ROOT / "configs" / "inpaint_4frame.yaml").model
