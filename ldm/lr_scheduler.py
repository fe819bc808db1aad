"""Learning-rate schedules for `scheduler_config` (LDM's name): multipliers of the base rate per step."""

from __future__ import annotations

import math


class LambdaWarmUpCosineScheduler:
    """Linear warm-up from `f_start` to `f_max` over `warm_up_steps`, then a cosine decay to `f_min`
    at `max_decay_steps` (held there afterwards). Called with the optimizer step, returns the factor."""

    def __init__(
        self,
        warm_up_steps: int,
        max_decay_steps: int,
        f_start: float = 0.0,
        f_max: float = 1.0,
        f_min: float = 0.0,
    ):
        if not 0 <= warm_up_steps < max_decay_steps:
            raise ValueError(
                f"need 0 <= warm_up_steps < max_decay_steps, got {warm_up_steps}, {max_decay_steps}"
            )
        self.warm_up_steps = warm_up_steps
        self.max_decay_steps = max_decay_steps
        self.f_start, self.f_max, self.f_min = f_start, f_max, f_min

    def __call__(self, step: int) -> float:
        if step < self.warm_up_steps:
            return self.f_start + (self.f_max - self.f_start) * step / self.warm_up_steps
        progress = min(1.0, (step - self.warm_up_steps) / (self.max_decay_steps - self.warm_up_steps))
        return self.f_min + 0.5 * (self.f_max - self.f_min) * (1 + math.cos(math.pi * progress))
