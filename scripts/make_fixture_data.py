#!/usr/bin/env python
"""Write miniature EPIC-KITCHENS, VISOR and EGO4D raw trees in the public formats (for tests and trials).

With --processed the raw trees go to OUT/raw, the preprocessing scripts turn them into HDF5 files
under OUT, and the environment variables that configs/inpaint_4frame.yaml reads are printed. What
the miniature data holds is described in ldm/data/fixture_data.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ldm.data.fixture_data import prepare_fixture_data, write_fixture_raw


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path, help="folder to write into")
    parser.add_argument("--processed", action="store_true", help="also run the preprocessing scripts")
    args = parser.parse_args(argv)
    if args.processed:
        for name, value in prepare_fixture_data(args.out.resolve()).items():
            print(f"export {name}={value}")
    else:
        for name, path in write_fixture_raw(args.out).items():
            print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
