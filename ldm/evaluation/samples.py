"""Evaluation samples with ground truth: a hand mask over frames whose true pixels are known.

Synthetic: held-out sequences (ldm.data.synthetic.sequences), the hands drawn over the clean frames.
Demo folder: real frames with hand masks (the demo's format); each frame gets a hole shaped like
another frame's hand, where its true pixels are known.
VISOR: `NoHands` validation samples, i.e. hands of one EPIC-KITCHENS clip pasted onto hand-free
frames of another (the paper's protocol); the background's real last frame is the ground truth.
Only hand-free VISOR backgrounds are used (no hand windows as backgrounds, no EGO4D), and any own
hands the annotations still give the background's last frame are left out of the scored region.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ldm.data.no_hands import NoHands
from ldm.data.synthetic.scenes import to_uint8_canvas
from ldm.data.synthetic.sequences import dilate, make_sequence
from ldm.inference.demo import ORDERS, read_demo_folder

SYNTHETIC_SEED_OFFSET = 10_000_000
"""Benchmark sequences are drawn from seeds no training run uses."""
MIN_HOLE_PIXELS = 20
"""Demo-folder holes smaller than this (at 256 px) are skipped: too few pixels to score."""


@dataclass
class EvalSample:
    """frames (T,S,S,3) uint8 as recorded (hands in), masks (T,S,S) bool (dilated), target (S,S,3) uint8.

    `known` (S,S) bool: where the target's truth is known, the only pixels scored (None: everywhere).
    """

    frames: np.ndarray
    masks: np.ndarray
    target: np.ndarray
    known: np.ndarray | None = None


def synthetic_samples(
    n: int, size: int, dilation: int, num_frames: int = 4, seed: int = 0
) -> Iterator[EvalSample]:
    """The held-out synthetic benchmark: n sequences at `size` pixels."""
    for i in range(n):
        seq = make_sequence(SYNTHETIC_SEED_OFFSET + seed * 100_003 + i, size, num_frames, split="heldout")
        yield EvalSample(
            to_uint8_canvas(seq.with_hands), dilate(seq.masks, dilation), to_uint8_canvas(seq.clean[-1])
        )


def demo_folder_samples(folder: Path, dilation: int) -> Iterator[EvalSample]:
    """Up to 12 samples from a demo folder (4 frames with hand masks, as demo_script.py reads them).

    Frame i, last in the demo's order, gets frame j's hand (minus its own) as the hole to fill, with
    the other three frames as context. Its own hand stays masked but unscored: its truth is unknown.
    """
    frames, masks = read_demo_folder(folder, dilation)
    for target, order in enumerate(ORDERS):
        sequence_frames = frames[list(order)]
        for other in range(len(frames)):
            hole = masks[other] & ~masks[target]
            if other == target or hole.sum() < MIN_HOLE_PIXELS:
                continue
            sequence_masks = masks[list(order)]
            sequence_masks[-1] = hole | masks[target]
            yield EvalSample(sequence_frames, sequence_masks, frames[target], known=~masks[target])


def visor_samples(n: int, dataset_params: dict, seed: int = 0) -> Iterator[EvalSample]:
    """n `NoHands` samples (hands masked over hand-free backgrounds, no random masks or flips) from fixed seeds."""

    params = {
        "frame_skip": 36,
        "num_frames": 4,
        **dataset_params,
        "with_hand_bg": False,
        "background_config": None,
        "random_mask_rate": 0.0,
        "flip_p": 0.0,
        "hand_mask_rate": 1.0,
        "seed": seed,
    }
    dataset = NoHands(**params)
    picks = np.random.default_rng(seed).choice(len(dataset), size=min(n, len(dataset)), replace=False)
    for index in picks:
        sample = dataset.sample(int(index))
        yield EvalSample(sample.context, sample.mask, sample.target, known=~sample.own_last)
