"""Sampling: frames and masks at the model's scale in, the inpainted target frames out (numpy both ways).

Frames of any aspect ratio are inpainted in square tiles: the frame is scaled so that its short side
is the model size R; R x R tiles then slide along the long side (along the columns of a landscape
frame, the rows of a portrait one), evenly spaced and overlapping by at least R/8. Only tiles that
still hold masked pixels are sampled. Within a tile, pixels that an earlier tile already inpainted
count as known, so each tile continues its neighbour's content instead of meeting it at a seam.
Context frames are cut to the same tile as their target.

A model may also run at a resolution above the size it was trained at (the embedded small model:
trained on 64-px frames, run at 128 px by default, where its first stage keeps far more detail). The
square frames are then filled in tiles of the training size, so that the UNet sees the latent grid
it was trained on: the tiles overlap by half, each is sampled on its own (context frames aligned on
the whole frame first; all tiles in one batch), and the overlapping results are averaged with weights that fall linearly
towards each tile's edges, which leaves no seams.
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
        tile: int | None = None,
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
        self.tile = tile
        """The model's training size: larger frames are filled in overlapping tiles of it (None: never)."""

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

        The result is the model's output everywhere (with tiles: wherever a tile was sampled, the
        target elsewhere); pasting the original back outside the mask is the caller's job. With
        `align_context` the context frames are first warped onto their target's view
        (ldm.data.alignment).
        """
        if self.align_context:
            aligned = [align_to_last(f, m) for f, m in zip(frames, masks, strict=True)]
            frames, masks = np.stack([f for f, _ in aligned]), np.stack([m for _, m in aligned])
        if self.tile is not None and frames.shape[2] > self.tile:
            return self._sample_in_tiles(frames, masks, generator, progress)
        return self._sample(frames, masks, generator, progress)

    def _sample_in_tiles(
        self, frames: np.ndarray, masks: np.ndarray, generator: Generators, progress: bool
    ) -> np.ndarray:
        """Overlapping tiles of the training size, sampled alone but in one batch, then averaged with
        edge-falling weights."""
        size = frames.shape[2]
        starts = tile_starts(size, self.tile, overlap_fraction=2)
        windows = [
            (slice(top, top + self.tile), slice(left, left + self.tile)) for top in starts for left in starts
        ]
        targets = masks[:, -1]
        tiles = [
            (i, rows, cols)
            for rows, cols in windows
            for i in np.flatnonzero(targets[:, rows, cols].any(axis=(1, 2)))
        ]
        if not tiles:
            return frames[:, -1].copy()
        tile_frames = np.stack([frames[i, :, rows, cols] for i, rows, cols in tiles])
        tile_masks = np.stack([masks[i, :, rows, cols] for i, rows, cols in tiles])
        generators = [generator[i] for i, _, _ in tiles] if isinstance(generator, Sequence) else generator
        filled = self._sample(tile_frames, tile_masks, generators, progress)
        weight = tile_weights(self.tile)[..., None]
        total = np.zeros((len(frames), size, size, 3))
        weights = np.zeros((len(frames), size, size, 1))
        for (i, rows, cols), fill in zip(tiles, filled, strict=True):
            total[i, rows, cols] += fill * weight
            weights[i, rows, cols] += weight
        blended = np.round(total / np.maximum(weights, 1e-12)).astype(np.uint8)
        return np.where(weights > 0, blended, frames[:, -1])

    def _sample(
        self, frames: np.ndarray, masks: np.ndarray, generator: Generators, progress: bool
    ) -> np.ndarray:
        """One DDIM run over the whole (already aligned) frames."""
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


def tile_starts(length: int, size: int, overlap_fraction: int = MIN_OVERLAP_FRACTION) -> list[int]:
    """Start offsets of `size`-long tiles that cover [0, length), evenly spaced, overlapping by at least
    1/overlap_fraction of their side."""
    if length <= size:
        return [0]
    stride = size - size // overlap_fraction
    count = math.ceil((length - size) / stride) + 1
    return [round(i * (length - size) / (count - 1)) for i in range(count)]


def tile_weights(size: int) -> np.ndarray:
    """(size, size) weights for averaging overlapping tiles: highest at the centre, falling linearly
    towards the edges but never to 0 (1/size² at a corner), so a pixel one tile alone covers keeps its value."""
    ramp = np.minimum(np.arange(size) + 0.5, size - 0.5 - np.arange(size)) / (size / 2)
    return np.outer(ramp, ramp)


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
