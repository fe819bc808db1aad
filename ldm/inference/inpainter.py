"""Sampling: frames and masks at the model's scale in, the inpainted target frames out (numpy both ways).

Frames of any aspect ratio are inpainted in square tiles: the frame is scaled so that its short side
is the model size R; R x R tiles then slide along the long side (along the columns of a landscape
frame, the rows of a portrait one), evenly spaced and overlapping by at least R/8. Only tiles that
still hold masked pixels are sampled. Within a tile, pixels that an earlier tile already inpainted
count as known, so each tile continues its neighbour's content instead of meeting it at a seam.
Context frames are cut to the same tile as their target.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from einops import rearrange
from torch import nn

from ldm.data.alignment import align_to_last
from ldm.inference.model import precision
from ldm.models.diffusion.ddim import SPACINGS, Generators, ddim_timesteps
from ldm.util import InputError, to_uint8

MIN_OVERLAP_FRACTION = 8
"""Tiles overlap by at least 1/8 of their side."""


def model_batch(frames: np.ndarray, masks: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
    """Frames (B,T,H,W,3) uint8 and bool masks (B,T,H,W) → the conditioner's batch.

    `hand_images` in [-1,1] with the masked pixels set to -1; `mask` is +1 where masked, -1 elsewhere.
    """
    mask = torch.from_numpy(np.ascontiguousarray(masks)).to(device)
    images = to_model_pixels(frames, device)
    return {"hand_images": images.masked_fill(mask[..., None], -1.0), "mask": mask.float() * 2.0 - 1.0}


def to_model_pixels(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 images (..., 3) → float tensor in [-1,1] on `device`, channels still last."""
    return torch.from_numpy(np.ascontiguousarray(images)).to(device).float() / 127.5 - 1.0


def seeded_generator(device: torch.device, *seed: int) -> torch.Generator:
    """A generator on `device` seeded from one or more integers (e.g. seed, video, frame)."""
    value = int(np.random.SeedSequence([int(s) for s in seed]).generate_state(1, np.uint64)[0])
    return torch.Generator(device=device).manual_seed(value)


class Inpainter:
    """Inpaints the last of T frames with a VIDM model, borrowing from the T-1 context frames before it."""

    def __init__(
        self,
        model: nn.Module,
        dtype: torch.dtype = torch.float32,
        steps: int = 200,
        eta: float = 1.0,
        spacing: str = "leading",
        align_context: bool = False,
    ):
        if spacing not in SPACINGS:
            raise InputError(f"--spacing {spacing}: use one of {', '.join(SPACINGS)}")
        try:
            ddim_timesteps(steps, model.num_timesteps, spacing)
        except ValueError as err:
            raise InputError(f"--steps {steps}: {err}") from None
        self.model = model
        self.dtype = dtype
        self.steps = steps
        self.eta = eta
        self.spacing = spacing
        self.align_context = align_context

    @property
    def device(self) -> torch.device:
        return self.model.betas.device

    @torch.no_grad()
    def __call__(
        self,
        frames: np.ndarray,
        masks: np.ndarray,
        generator: Generators = None,
        progress: bool = False,
    ) -> np.ndarray:
        """Frames (B,T,R,R,3) uint8 and bool masks (B,T,R,R) → decoded targets (B,R,R,3) uint8.

        The result is the model's output everywhere; pasting the original back outside the mask is
        the caller's job. With `align_context` the context frames are first warped onto their
        target's view (ldm.data.alignment).
        """
        if self.align_context:
            aligned = [align_to_last(f, m) for f, m in zip(frames, masks, strict=True)]
            frames, masks = np.stack([f for f, _ in aligned]), np.stack([m for _, m in aligned])
        batch = model_batch(frames, masks, self.device)
        with precision(self.device, self.dtype):
            cond = self.model.get_learned_conditioning(batch)
            latents, _ = self.model.sample_log(
                cond,
                len(frames),
                ddim_steps=self.steps,
                eta=self.eta,
                spacing=self.spacing,
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


def tile_starts(length: int, size: int) -> list[int]:
    """Start offsets of `size`-long tiles that cover [0, length), evenly spaced, overlapping enough."""
    if length <= size:
        return [0]
    stride = size - size // MIN_OVERLAP_FRACTION
    count = math.ceil((length - size) / stride) + 1
    return [round(i * (length - size) / (count - 1)) for i in range(count)]


def _split(generator: Generators, todo: np.ndarray) -> Generators:
    """The generators of the samples `todo` (a shared generator stays shared)."""
    return [generator[i] for i in todo] if isinstance(generator, Sequence) else generator


def inpaint_tiles(
    inpainter: Inpainter,
    frames: np.ndarray,
    masks: np.ndarray,
    generator: Generators = None,
) -> np.ndarray:
    """Frames (B,T,H,W,3) uint8 and bool masks (B,T,H,W) with min(H,W) the model size → the last
    frames (B,H,W,3) with their masked pixels inpainted (other pixels unchanged)."""
    height, width = frames.shape[2:4]
    size = min(height, width)
    target = frames[:, -1].copy()
    remaining = masks[:, -1].copy()
    for top in tile_starts(height, size):
        for left in tile_starts(width, size):
            rows, cols = slice(top, top + size), slice(left, left + size)
            todo = np.flatnonzero(remaining[:, rows, cols].any(axis=(1, 2)))
            if not len(todo):
                continue
            tile_frames = frames[todo][:, :, rows, cols].copy()
            tile_masks = masks[todo][:, :, rows, cols].copy()
            tile_frames[:, -1] = target[todo, rows, cols]
            tile_masks[:, -1] = remaining[todo, rows, cols]
            inpainted = inpainter(tile_frames, tile_masks, _split(generator, todo))
            target[todo, rows, cols] = np.where(tile_masks[:, -1, ..., None], inpainted, tile_frames[:, -1])
            remaining[todo, rows, cols] = False
    return target
