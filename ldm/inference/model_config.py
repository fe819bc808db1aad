"""The model config inference builds: each Lightning training module swapped for the module it trains
(same weights, no Lightning import, which takes seconds), without the settings only training reads."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from omegaconf import OmegaConf

from ldm.util import get_obj_from_str

INFERENCE_CLASSES = {
    "ldm.models.diffusion.latent_diffusion.LatentDiffusion": "ldm.models.diffusion.core.LatentDiffusionModel",
    "ldm.models.autoencoder.VQModelInterface": "ldm.models.first_stage.VQFirstStage",
}
"""Lightning training modules → the modules they train, which hold the same weights and import no
Lightning (it takes seconds to import). Other targets are built as they are."""


def init_parameter_names(cls: type) -> set[str]:
    """Keyword parameters `cls(...)` takes, following `**kwargs` up its base classes."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = inspect.signature(klass.__init__).parameters.values()
        names |= {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            break
    return names - {"self"}


def _for_inference(node: Any) -> Any:
    """A config (sub)tree with each training module swapped for its inference class, keeping only the
    params that class takes (the rest, such as learning rates, EMA and loss settings, and the
    `ckpt_path`s, only matter to training: the checkpoint supplies the weights)."""
    if isinstance(node, list):
        return [_for_inference(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _for_inference(value) for key, value in node.items()}
    if node.get("target") in INFERENCE_CLASSES:
        node["target"] = INFERENCE_CLASSES[node["target"]]
        taken = init_parameter_names(get_obj_from_str(node["target"]))
        node["params"] = {k: v for k, v in (node.get("params") or {}).items() if k in taken}
    return node


def inference_config(model_config: Mapping) -> dict:
    """The model config that inference builds: Lightning-free classes, no weight-file references."""
    cfg = _for_inference(OmegaConf.to_container(OmegaConf.create(model_config), resolve=True))
    params = cfg.setdefault("params", {})
    if cfg.get("target") not in INFERENCE_CLASSES.values():
        params["use_ema"] = False  # another Lightning module: its EMA becomes the weights at load
    params.pop("ckpt_path", None)
    params.get("first_stage_config", {}).get("params", {}).pop("ckpt_path", None)
    return cfg
