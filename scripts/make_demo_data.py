#!/usr/bin/env python
"""Write demo_data/: four 256x256 frames of a held-out synthetic sequence and their hand masks.

The layout is the published demo's: raw/*.jpg (frames with hands) and masks/*.png (3-channel,
0/255). The scene is a held-out scikit-image photograph that the embedded model never saw in
training; nothing comes from EPIC-KITCHENS.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from ldm.data.synthetic.scenes import to_uint8_canvas
from ldm.data.synthetic.sequences import make_sequence

DEMO_SEED = 3
SIZE = 256
log = logging.getLogger("make_demo_data")


def write_demo(out: Path, seed: int = DEMO_SEED, size: int = SIZE) -> None:
    """Render the sequence and write raw/ and masks/ under `out` (replaced atomically)."""
    seq = make_sequence(seed, size, num_frames=4, split="heldout")
    staging = Path(tempfile.mkdtemp(prefix=".demo_data_", dir=out.parent))
    (staging / "raw").mkdir()
    (staging / "masks").mkdir()
    for t, (frame, mask) in enumerate(zip(seq.with_hands, seq.masks, strict=True)):
        bgr = cv2.cvtColor(to_uint8_canvas(frame), cv2.COLOR_RGB2BGR)
        cv2.imwrite(
            str(staging / "raw" / f"synthetic_{seed:03d}_{t}.jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, 95]
        )
        cv2.imwrite(
            str(staging / "masks" / f"synthetic_{seed:03d}_{t}.png"),
            np.repeat(mask[..., None], 3, 2) * np.uint8(255),
        )
    if out.exists():
        shutil.rmtree(out)
    staging.chmod(0o755)
    staging.rename(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "demo_data")
    parser.add_argument("--seed", type=int, default=DEMO_SEED, help="held-out sequence to render")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_demo(args.out, args.seed)
    log.info("wrote %s (held-out synthetic sequence %d)", args.out, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
