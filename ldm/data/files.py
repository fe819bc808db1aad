"""Finding a dataset's HDF5 files from a folder, a list file, or a list in the config."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

SUFFIX = ".hdf5"


def resolve_hdf5_files(
    root: str | Path | None, files: str | Path | Sequence[str] | None = None
) -> list[Path]:
    """The HDF5 files a dataset reads.

    `files` is None (every *.hdf5 in `root`), a folder (every *.hdf5 in it), a .txt file with one
    name a line, or a list of names. Folders and .txt files given as relative paths resolve against
    the current directory; names resolve against `root` and may omit the .hdf5 suffix.
    """
    if files is None:
        if root is None:
            raise ValueError("no files given: set the file list or folder, or the data root")
        return _folder(Path(root))
    if isinstance(files, str | Path):
        source = Path(files)
        if source.is_dir():
            return _folder(source)
        if not source.is_file():
            raise FileNotFoundError(f"{source}: no such folder or file list")
        names = [line.strip() for line in source.read_text().splitlines() if line.strip()]
        origin = str(source)
    else:
        names, origin = [str(n) for n in files], "the config"
    if root is None:
        raise ValueError(f"{origin} lists file names but no data root is set to find them in")
    paths = [_named(Path(root), name) for name in names]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{missing[0]} (listed in {origin}) not found; {len(missing)} of {len(paths)} missing"
        )
    if not paths:
        raise ValueError(f"{origin}: lists no files")
    return paths


def _named(root: Path, name: str) -> Path:
    path = root / name
    return path if path.suffix == SUFFIX else path.with_name(path.name + SUFFIX)


def _folder(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    paths = sorted(folder.glob(f"*{SUFFIX}"))
    if not paths:
        raise FileNotFoundError(f"{folder}: no *{SUFFIX} files")
    return paths
