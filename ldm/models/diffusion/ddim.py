"""DDIM sampling (Song et al. 2021) for any DDPM/LatentDiffusion model, on any device."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm


def ddim_timesteps(num_steps: int, num_train_steps: int) -> np.ndarray:
    """LDM's uniform DDIM steps, k * (T // S) + 1 for k < S (0..T-1 when S = T).

    LDM writes this as arange(0, T, T // S) + 1, which is the same when S divides T and S < T, but
    steps past the end of the schedule otherwise (S + 1 steps for S = 3; step T for S = T).
    """
    if not 0 < num_steps <= num_train_steps:
        raise ValueError(f"DDIM steps must be in 1..{num_train_steps}, got {num_steps}")
    steps = np.arange(num_steps) * (num_train_steps // num_steps) + 1
    return steps - 1 if steps[-1] >= num_train_steps else steps


@dataclass
class DDIMSchedule:
    timesteps: list[int]
    alphas: list[float]
    alphas_prev: list[float]
    sigmas: list[float]

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod: torch.Tensor, num_steps: int, eta: float) -> DDIMSchedule:
        """ᾱ at the DDIM steps, ᾱ_prev = [ᾱ_0, previous...], σ = eta·sqrt((1-ᾱ_prev)/(1-ᾱ)·(1-ᾱ/ᾱ_prev))."""
        acp = alphas_cumprod.detach().cpu().double().numpy()
        steps = ddim_timesteps(num_steps, len(acp))
        alphas = acp[steps]
        alphas_prev = np.concatenate([acp[:1], acp[steps[:-1]]])
        sigmas = eta * np.sqrt((1 - alphas_prev) / (1 - alphas) * (1 - alphas / alphas_prev))
        return cls(steps.tolist(), alphas.tolist(), alphas_prev.tolist(), sigmas.tolist())


class DDIMSampler:
    def __init__(self, model: Any):
        self.model = model

    @torch.no_grad()
    def sample(
        self,
        S: int,
        batch_size: int,
        shape: tuple[int, ...],
        conditioning: Any = None,
        eta: float = 0.0,
        x_T: torch.Tensor | None = None,
        verbose: bool = False,
        generator: torch.Generator | None = None,
        log_every_t: int = 100,
    ) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        """Denoise from x_T (default N(0, I)) in S steps; returns (x_0, intermediates).

        `verbose` shows a progress bar; `generator` makes the noise reproducible on any device.
        """
        device = self.model.betas.device
        sched = DDIMSchedule.from_alphas_cumprod(self.model.alphas_cumprod, S, eta)
        x = x_T if x_T is not None else torch.randn((batch_size, *shape), device=device, generator=generator)
        intermediates: dict[str, list[torch.Tensor]] = {"x_inter": [x], "pred_x0": [x]}
        for i, index in enumerate(tqdm(range(S - 1, -1, -1), desc="DDIM", total=S, disable=not verbose)):
            t = torch.full((x.shape[0],), sched.timesteps[index], device=device, dtype=torch.long)
            x, pred_x0 = self.step(x, t, conditioning, index, sched, generator)
            if i % log_every_t == 0 or i == S - 1:
                intermediates["x_inter"].append(x)
                intermediates["pred_x0"].append(pred_x0)
        return x, intermediates

    def step(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: Any,
        index: int,
        sched: DDIMSchedule,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One update x_t → x_{t_prev}; also returns the predicted x_0."""
        e_t = self.model.apply_model(x, t, cond).to(x.dtype)
        a_t, a_prev, sigma = sched.alphas[index], sched.alphas_prev[index], sched.sigmas[index]
        pred_x0 = (x - math.sqrt(1 - a_t) * e_t) / math.sqrt(a_t)
        x_prev = math.sqrt(a_prev) * pred_x0 + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * e_t
        if sigma > 0:
            x_prev = x_prev + sigma * torch.randn(
                x.shape, device=x.device, dtype=x.dtype, generator=generator
            )
        return x_prev, pred_x0
