"""Sampling: frames and masks at the model's scale in, the inpainted target frames out (numpy both ways).

The model samples square tiles of its training size (or of the frames' short side, if that is
smaller). A frame that is not one such tile (a landscape or portrait frame, or a frame above the
training size: the embedded small model, trained on 64-px frames, runs at 128 px by default, where
its first stage keeps far more detail) is covered by tiles that slide along both axes, evenly
spaced and overlapping by at least 1/8 of their side, so that the UNet always sees the latent grid
it was trained on. Context frames are aligned on the whole frame first and cut to the same tile as
their target; only tiles that hold masked pixels are sampled, each on its own (as many at a time
as the caller gave frames, which bounds the memory of one model call), and the overlapping results
are averaged with weights that fall linearly towards each tile's edges, which leaves no seams.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from einops import rearrange
from torch import nn
from tqdm.auto import tqdm

from ldm.inference.alignment import align_to_last
from ldm.inference.device import precision
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
        """The model's training size, the largest tile it samples (None: the frames' short side)."""

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
        """Frames (B,T,H,W,3) uint8 and bool masks (B,T,H,W) → decoded targets (B,H,W,3) uint8 (a 2D
        model: frames (B,H,W,3) and masks (B,H,W), the targets themselves).

        The result is the model's output wherever a tile was sampled (everywhere for a frame that is
        one tile) and the target elsewhere; pasting the original back outside the mask is the
        caller's job. With `align_context` the context frames are first warped onto their target's
        view (ldm.inference.alignment).
        """
        if self.align_context:
            aligned = [align_to_last(f, m) for f, m in zip(frames, masks, strict=True)]
            frames, masks = np.stack([f for f, _ in aligned]), np.stack([m for _, m in aligned])
        height, width = frames.shape[-3:-1]
        tile = min(self.tile or height, height, width)
        if height == width == tile:
            return self._sample(frames, masks, generator, progress)
        return self._sample_in_tiles(frames, masks, generator, progress, tile)

    def _sample_in_tiles(
        self, frames: np.ndarray, masks: np.ndarray, generator: Generators, progress: bool, tile: int
    ) -> np.ndarray:
        """Overlapping tile x tile windows, each sampled alone, then averaged with edge-falling weights."""
        height, width = frames.shape[-3:-1]
        targets, target_masks = (frames[:, -1], masks[:, -1]) if masks.ndim == 4 else (frames, masks)
        windows = [
            (slice(top, top + tile), slice(left, left + tile))
            for top in tile_starts(height, tile)
            for left in tile_starts(width, tile)
        ]
        tiles = [
            (i, rows, cols)
            for rows, cols in windows
            for i in np.flatnonzero(target_masks[:, rows, cols].any(axis=(1, 2)))
        ]
        if not tiles:
            return targets.copy()
        tile_frames = np.stack([frames[i][..., rows, cols, :] for i, rows, cols in tiles])
        tile_masks = np.stack([masks[i][..., rows, cols] for i, rows, cols in tiles])
        generators = tile_generators(generator, [i for i, _, _ in tiles])
        batch = len(frames)  # tiles go through the model as many at a time as the caller's frames
        filled = []
        for start in tqdm(range(0, len(tiles), batch), desc="tiles", disable=not progress, leave=False):
            chunk = slice(start, start + batch)
            chunk_generators = generators[chunk] if isinstance(generators, list) else generators
            filled += list(
                self._sample(tile_frames[chunk], tile_masks[chunk], chunk_generators, progress=False)
            )
        weight = tile_weights(tile)[..., None]
        total = np.zeros((len(frames), height, width, 3))
        weights = np.zeros((len(frames), height, width, 1))
        for (i, rows, cols), fill in zip(tiles, filled, strict=True):
            total[i, rows, cols] += fill * weight
            weights[i, rows, cols] += weight
        blended = np.round(total / np.maximum(weights, 1e-12)).astype(np.uint8)
        return np.where(weights > 0, blended, targets)

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


def tile_starts(length: int, size: int) -> list[int]:
    """Start offsets of `size`-long tiles that cover [0, length), evenly spaced, overlapping enough."""
    if length <= size:
        return [0]
    stride = size - size // MIN_OVERLAP_FRACTION
    count = math.ceil((length - size) / stride) + 1
    return [round(i * (length - size) / (count - 1)) for i in range(count)]


def tile_generators(generator: Generators, frame_of_tile: list[int]) -> Generators:
    """Given one generator per frame, one per tile, seeded from its frame's generator's seed and the
    tile's number within that frame: a frame's result then depends neither on the frames it was
    batched with nor on how its tiles were batched. A shared generator (or none) stays as it is."""
    if not isinstance(generator, Sequence):
        return generator
    numbers: dict[int, int] = {}
    tile_gens = []
    for frame in frame_of_tile:
        numbers[frame] = numbers.get(frame, -1) + 1
        tile_gens.append(
            seeded_generator(generator[frame].device, generator[frame].initial_seed(), numbers[frame])
        )
    return tile_gens


def tile_weights(size: int) -> np.ndarray:
    """(size, size) weights for averaging overlapping tiles: highest at the centre, falling linearly
    towards the edges but never to 0 (1/size² at a corner), so a pixel one tile alone covers keeps its value."""
    ramp = np.minimum(np.arange(size) + 0.5, size - 0.5 - np.arange(size)) / (size / 2)
    return np.outer(ramp, ramp)
