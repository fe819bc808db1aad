"""DDIM sampling (Song et al. 2021) for any DDPM/LatentDiffusion model, on any device.

`DDIMSchedule` holds the step sizes and does one update from the model's ε or v prediction (no model
inside), so windows, guidance and batching can reuse it; `DDIMSampler` runs the model over the schedule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

SPACINGS = ("leading", "trailing")
"""How DDIM spreads its S steps over the T training steps (see `ddim_timesteps`)."""


def ddim_timesteps(num_steps: int, num_train_steps: int, spacing: str = "leading") -> np.ndarray:
    """The S timesteps a DDIM run visits, ascending.

    `leading`: LDM's uniform steps, k * (T // S) + 1 for k < S (0..T-1 when S = T). LDM writes this
    as arange(0, T, T // S) + 1, which is the same when S divides T and S < T, but steps past the end
    of the schedule otherwise (S + 1 steps for S = 3; step T for S = T). The first step is not T-1,
    so the sampler hands pure noise to the model as if it were a less noisy x_t.
    `trailing`: round(T - k * T / S) - 1 for k < S, so the first step is T-1, where x_T is pure noise
    (Lin et al., "Common Diffusion Noise Schedules and Sample Steps are Flawed", WACV 2024).
    """
    if not 0 < num_steps <= num_train_steps:
        raise ValueError(
            f"{num_steps} DDIM steps do not fit the {num_train_steps}-step schedule; use 1..{num_train_steps}"
        )
    if spacing not in SPACINGS:
        raise ValueError(f"timestep spacing must be one of {', '.join(SPACINGS)}, got {spacing!r}")
    if spacing == "trailing":
        from_the_end = np.round(num_train_steps - np.arange(num_steps) * num_train_steps / num_steps)
        return from_the_end[::-1].astype(int) - 1
    steps = np.arange(num_steps) * (num_train_steps // num_steps) + 1
    return steps - 1 if steps[-1] >= num_train_steps else steps


Generators = torch.Generator | Sequence[torch.Generator] | None
"""One generator for a batch, one per sample (results independent of the batch), or none (global RNG)."""


def randn(shape: Sequence[int], device: torch.device, generator: Generators = None) -> torch.Tensor:
    """N(0, I) of `shape`, float32: from one generator or, given a sequence, each sample (first axis)
    from its own generator."""
    if isinstance(generator, Sequence):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
        return torch.stack([torch.randn(tuple(shape[1:]), device=device, generator=g) for g in generator])
    return torch.randn(tuple(shape), device=device, generator=generator)


@dataclass
class DDIMSchedule:
    timesteps: list[int]
    alphas: list[float]
    alphas_prev: list[float]
    sigmas: list[float]

    @classmethod
    def from_alphas_cumprod(
        cls, alphas_cumprod: torch.Tensor, num_steps: int, eta: float, spacing: str = "leading"
    ) -> DDIMSchedule:
        """ᾱ at the DDIM steps, ᾱ_prev = [ᾱ_0, previous...], σ = eta·sqrt((1-ᾱ_prev)/(1-ᾱ)·(1-ᾱ/ᾱ_prev))."""
        acp = alphas_cumprod.detach().cpu().double().numpy()
        steps = ddim_timesteps(num_steps, len(acp), spacing)
        alphas = acp[steps]
        alphas_prev = np.concatenate([acp[:1], acp[steps[:-1]]])
        sigmas = eta * np.sqrt((1 - alphas_prev) / (1 - alphas) * (1 - alphas / alphas_prev))
        return cls(steps.tolist(), alphas.tolist(), alphas_prev.tolist(), sigmas.tolist())

    def __len__(self) -> int:
        return len(self.timesteps)

    def step(
        self,
        model_output: torch.Tensor,
        index: int,
        x: torch.Tensor,
        noise: torch.Tensor | None = None,
        parameterization: str = "eps",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x_t → x_{t_prev} at schedule position `index` given the model's ε (or, for
        `parameterization="v"`, v) prediction; also returns the predicted x_0. With eta > 0 the step
        adds σ·`noise`, which the caller draws (N(0, I))."""
        a_t, a_prev, sigma = self.alphas[index], self.alphas_prev[index], self.sigmas[index]
        model_output = model_output.to(x.dtype)
        if parameterization == "v":
            pred_x0 = math.sqrt(a_t) * x - math.sqrt(1 - a_t) * model_output
            eps = math.sqrt(1 - a_t) * x + math.sqrt(a_t) * model_output
        else:
            eps = model_output
            pred_x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        x_prev = math.sqrt(a_prev) * pred_x0 + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * eps
        if sigma > 0:
            if noise is None:
                raise ValueError("a DDIM step with eta > 0 needs noise")
            x_prev = x_prev + sigma * noise.to(x.dtype)
        return x_prev, pred_x0


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
        generator: Generators = None,
        log_every_t: int = 100,
        spacing: str = "leading",
    ) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        """Denoise from x_T (default N(0, I), float32) in S steps; returns (x_0, intermediates).

        `verbose` shows a progress bar; `generator` (one, or one per sample) makes the noise
        reproducible on any device; `spacing` picks the S timesteps (`ddim_timesteps`).
        """
        device = self.model.betas.device
        sched = DDIMSchedule.from_alphas_cumprod(self.model.alphas_cumprod, S, eta, spacing)
        x = x_T if x_T is not None else randn((batch_size, *shape), device, generator)
        intermediates: dict[str, list[torch.Tensor]] = {"x_inter": [x], "pred_x0": [x]}
        for i, index in enumerate(tqdm(range(S - 1, -1, -1), desc="DDIM", total=S, disable=not verbose)):
            t = torch.full((x.shape[0],), sched.timesteps[index], device=device, dtype=torch.long)
            output = self.model.apply_model(x, t, conditioning)
            noise = randn(x.shape, device, generator) if sched.sigmas[index] > 0 else None
            x, pred_x0 = sched.step(output, index, x, noise, self.model.parameterization)
            if i % log_every_t == 0 or i == S - 1:
                intermediates["x_inter"].append(x)
                intermediates["pred_x0"].append(pred_x0)
        return x, intermediates
