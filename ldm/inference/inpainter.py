"""Sampling: frames and masks at the model's size in, the inpainted target frames out (numpy both ways)."""

from __future__ import annotations

import numpy as np
import torch
from einops import rearrange
from torch import nn

from ldm.inference.errors import InputError
from ldm.inference.runtime import precision


def model_batch(frames: np.ndarray, masks: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
    """Frames (B,T,H,W,3) uint8 and bool masks (B,T,H,W) → the conditioner's batch (SPEC 3.1).

    `hand_images` in [-1,1] with the masked pixels set to -1; `mask` is +1 where masked, -1 elsewhere.
    """
    mask = torch.from_numpy(np.ascontiguousarray(masks)).to(device)
    images = to_model_pixels(frames, device)
    return {"hand_images": images.masked_fill(mask[..., None], -1.0), "mask": mask.float() * 2.0 - 1.0}


def to_model_pixels(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 images (..., 3) → float tensor in [-1,1] on `device`, channels still last."""
    return torch.from_numpy(np.ascontiguousarray(images)).to(device).float() / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Decoded images (B,3,H,W) in ~[-1,1] → (B,H,W,3) uint8."""
    pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return rearrange(pixels, "b c h w -> b h w c").cpu().numpy()


def seeded_generator(device: torch.device, *seed: int) -> torch.Generator:
    """A generator on `device` seeded from one or more integers (e.g. seed, video, frame)."""
    value = int(np.random.SeedSequence([int(s) for s in seed]).generate_state(1, np.uint64)[0])
    return torch.Generator(device=device).manual_seed(value)


def check_ddim_steps(steps: int, num_timesteps: int) -> None:
    """Refuse step counts outside 1..T (the DDIM schedule takes any S in that range)."""
    if not 0 < steps <= num_timesteps:
        raise InputError(
            f"--steps {steps} does not fit the {num_timesteps}-step schedule; use 1..{num_timesteps}"
        )


class Inpainter:
    """Inpaints the last of T frames with a VIDM model, borrowing from the T-1 context frames before it."""

    def __init__(
        self, model: nn.Module, dtype: torch.dtype = torch.float32, steps: int = 200, eta: float = 1.0
    ):
        check_ddim_steps(steps, model.num_timesteps)
        self.model = model
        self.dtype = dtype
        self.steps = steps
        self.eta = eta

    @property
    def device(self) -> torch.device:
        return self.model.betas.device

    @torch.no_grad()
    def __call__(
        self,
        frames: np.ndarray,
        masks: np.ndarray,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """Frames (B,T,R,R,3) uint8 and bool masks (B,T,R,R) → decoded targets (B,R,R,3) uint8.

        The result is the model's output everywhere; pasting the original back outside the mask is
        the caller's job.
        """
        batch = model_batch(frames, masks, self.device)
        with precision(self.device, self.dtype):
            cond = self.model.get_learned_conditioning(batch)
            latents, _ = self.model.sample_log(
                cond,
                batch_size=len(frames),
                ddim_steps=self.steps,
                eta=self.eta,
                verbose=progress,
                generator=generator,
            )
            images = self.model.decode_first_stage(latents)
        return to_uint8(images)

    @torch.no_grad()
    def autoencode(self, images: np.ndarray) -> np.ndarray:
        """Images (B,R,R,3) uint8 through the first stage (encode, quantise, decode), as uint8."""
        x = to_model_pixels(images, self.device)
        with precision(self.device, self.dtype):
            latents = self.model.encode_first_stage(rearrange(x, "b h w c -> b c h w"))
            return to_uint8(self.model.decode_first_stage(latents))
