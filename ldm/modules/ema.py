"""Exponential moving average of a module's trainable parameters, stored as buffers."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def shadow_name(param_name: str) -> str:
    """LDM's buffer name for a parameter: the dotted name with the dots removed."""
    return param_name.replace(".", "")


class LitEma(nn.Module):
    """EMA with warm-up: decay_n = min(decay, (1 + n) / (10 + n)) after the n-th update."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, use_num_updates: bool = True):
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.register_buffer("decay", torch.tensor(decay, dtype=torch.float32))
        self.register_buffer("num_updates", torch.tensor(0 if use_num_updates else -1, dtype=torch.int32))
        self.shadow_names: dict[str, str] = {}
        for name, param in model.named_parameters():
            if param.requires_grad:
                self.shadow_names[name] = shadow_name(name)
                self.register_buffer(self.shadow_names[name], param.detach().clone())
        self._stored: list[torch.Tensor] = []

    @torch.no_grad()
    def forward(self, model: nn.Module) -> None:
        """Move every shadow towards the model's current parameter."""
        decay = float(self.decay)
        if self.num_updates >= 0:
            self.num_updates += 1
            n = int(self.num_updates)
            decay = min(decay, (1 + n) / (10 + n))
        shadows = dict(self.named_buffers())
        for name, param in model.named_parameters():
            if name in self.shadow_names:
                shadow = shadows[self.shadow_names[name]]
                shadow.sub_((1.0 - decay) * (shadow - param.to(shadow.dtype)))

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite the model's parameters with the EMA values."""
        shadows = dict(self.named_buffers())
        for name, param in model.named_parameters():
            if name in self.shadow_names:
                param.copy_(shadows[self.shadow_names[name]])

    def store(self, parameters: Iterable[torch.Tensor]) -> None:
        """Save copies of `parameters` to bring back with `restore`."""
        self._stored = [p.detach().clone() for p in parameters]

    @torch.no_grad()
    def restore(self, parameters: Iterable[torch.Tensor]) -> None:
        for stored, param in zip(self._stored, parameters, strict=True):
            param.copy_(stored)
        self._stored = []
