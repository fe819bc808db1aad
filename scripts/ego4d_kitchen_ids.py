#!/usr/bin/env python
"""List the EGO4D videos filmed in kitchens.

Reads EGO4D's annotations/narration.json ({video_uid: {narration_pass_N: {"summaries":
[{"summary_text": ...}], ...}}}) and writes the uids of the videos whose summary text contains
"kitchen" (case-sensitive, as in the official run), sorted, one a line.

The repository ships the published list (data/ego4d_kitchen_ids.txt, 654 uids): you need this script
only for another narration release or keyword. It never replaces an existing list unless --force.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ldm.preprocessing.jobs import configure_logging, read_json, refuse_overwrite, write_lines
from ldm.util import InputError

log = logging.getLogger("ego4d_kitchen_ids")

KEYWORD = "kitchen"


def summary_texts(passes: Any) -> list[str]:
    """Every summary text of one video's narration passes."""
    if not isinstance(passes, Mapping):
        return []
    texts = []
    for narration_pass in passes.values():
        if isinstance(narration_pass, Mapping):
            texts += [str(s.get("summary_text", "")) for s in narration_pass.get("summaries") or ()]
    return texts


def kitchen_ids(narrations: Mapping[str, Any], keyword: str = KEYWORD) -> list[str]:
    """Sorted uids of the videos with `keyword` in a narration summary."""
    return sorted(
        uid for uid, passes in narrations.items() if any(keyword in t for t in summary_texts(passes))
    )


def load_narrations(path: Path) -> Mapping[str, Any]:
    if path.is_dir():
        path = path / "annotations" / "narration.json"
    narrations = read_json(path)
    if not isinstance(narrations, Mapping):
        raise InputError(f"{path}: not an EGO4D narration file (expected an object of video uids)")
    return narrations


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "narrations", type=Path, help="EGO4D annotations/narration.json (or the EGO4D folder)"
    )
    parser.add_argument("--out", type=Path, required=True, help="output list")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)
    configure_logging()
    try:
        refuse_overwrite([args.out], args.force)
        narrations = load_narrations(args.narrations)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    ids = kitchen_ids(narrations)
    write_lines(args.out, ids)
    log.info("%s: %d of %d videos mention %r", args.out, len(ids), len(narrations), KEYWORD)
    return 0


if __name__ == "__main__":
    sys.exit(main())
