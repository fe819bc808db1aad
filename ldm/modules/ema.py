"""Exponential moving average of a module's trainable parameters, stored as buffers."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ldm.checkpoint import shadow_name


class LitEma(nn.Module):
    """EMA with warm-up: decay_n = min(decay, (1 + n) / (10 + n)) after the n-th update.

    `decay` and `num_updates` are buffers, as in the published checkpoints, and mirrored as Python
    numbers that the update reads: reading the buffers on every step would wait for the GPU each time.
    The mirrors follow the buffers whenever a state dict is loaded.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, use_num_updates: bool = True):
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.register_buffer("decay", torch.tensor(decay, dtype=torch.float32))
        self.register_buffer("num_updates", torch.tensor(0 if use_num_updates else -1, dtype=torch.int32))
        self._decay = float(decay)
        self._num_updates = 0 if use_num_updates else -1
        self.register_load_state_dict_post_hook(LitEma._read_counters)
        self.shadow_names: dict[str, str] = {}
        for name, param in model.named_parameters():
            if param.requires_grad:
                self.shadow_names[name] = shadow_name(name)
                self.register_buffer(self.shadow_names[name], param.detach().clone())
        self._stored: list[torch.Tensor] = []

    def _read_counters(self, incompatible_keys: object = None) -> None:
        """Mirror the `decay` and `num_updates` buffers as Python numbers (after a load)."""
        self._decay = float(self.decay)
        self._num_updates = int(self.num_updates)

    def pairs(self, model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(shadows, parameters) of `model`, in the same order."""
        shadows = dict(self.named_buffers())
        named = [
            (shadows[self.shadow_names[n]], p) for n, p in model.named_parameters() if n in self.shadow_names
        ]
        return [s for s, _ in named], [p for _, p in named]

    @torch.no_grad()
    def forward(self, model: nn.Module) -> None:
        """Move every shadow towards the model's current parameter (one foreach lerp)."""
        decay = self._decay
        if self._num_updates >= 0:
            self._num_updates += 1
            self.num_updates.fill_(self._num_updates)
            decay = min(decay, (1 + self._num_updates) / (10 + self._num_updates))
        shadows, params = self.pairs(model)
        if shadows:
            torch._foreach_lerp_(
                shadows, [p.to(s.dtype) for s, p in zip(shadows, params, strict=True)], 1.0 - decay
            )

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite the model's parameters with the EMA values."""
        shadows, params = self.pairs(model)
        if shadows:
            torch._foreach_copy_(params, shadows)

    def as_parameters(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """{parameter name: EMA shadow} for `torch.func.functional_call(model, ...)`: the model run with
        its EMA weights without copying them in."""
        shadows = dict(self.named_buffers())
        return {name: shadows[shadow] for name, shadow in self.shadow_names.items()}

    def store(self, parameters: Iterable[torch.Tensor]) -> None:
        """Save copies of `parameters` to bring back with `restore`."""
        self._stored = [p.detach().clone() for p in parameters]

    @torch.no_grad()
    def restore(self, parameters: Iterable[torch.Tensor]) -> None:
        for stored, param in zip(self._stored, parameters, strict=True):
            param.copy_(stored)
        self._stored = []
