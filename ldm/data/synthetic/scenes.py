"""Scenes the synthetic sequences are filmed in: scikit-image pictures, desktop wallpapers, tabletops.

Held-out sequences (the evaluation benchmark, demo_data/) use only the held-out scikit-image pictures.
Training uses the other scikit-image pictures and procedural tabletop scenes and, only where a caller
asks for them, the wallpapers of Debian's gnome-backgrounds, mate-backgrounds and
plasma-workspace-wallpapers packages (`make wallpapers` installs them), found at run time under
WALLPAPER_ROOTS (or the folders that $VIDM_WALLPAPERS lists, separated by the path separator).
Asking for wallpapers where none are found is an error, so what a clip shows never depends on what
happens to be installed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import skimage.data

# Colour photographs and grey textures of skimage.data. The held-out ones never appear in
# training: the evaluation benchmark and demo_data/ are made from them.
TRAIN_PHOTOS = ("astronaut", "hubble_deep_field", "immunohistochemistry", "retina", "colorwheel", "logo")
TRAIN_TEXTURES = ("brick", "grass", "gravel", "camera", "moon", "page", "text", "clock", "cell")
HELDOUT_PHOTOS = ("coffee", "chelsea", "rocket")
HELDOUT_TEXTURES = ("coins",)

CANVAS = 512

WALLPAPER_ROOTS = ("/usr/share/backgrounds", "/usr/share/wallpapers")
WALLPAPER_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
WALLPAPER_MIN_BYTES = 20_000
"""Smaller files are tiles or flat colours, not pictures."""
WALLPAPER_SIDE = 640
"""Short side, in pixels, a wallpaper is resized to once per process."""

PROCEDURAL_SCENES = 128
"""Tabletop scenes per process, each drawn on first use from a fixed seed."""
PROCEDURAL_SIDE = 384
PROCEDURAL_SEED = 0x7AB1E

KIND_WEIGHTS = {"wallpaper": 0.45, "photo": 0.2, "texture": 0.1, "procedural": 0.25}
"""How often training draws each kind of scene with wallpapers."""
KIND_WEIGHTS_WITHOUT_WALLPAPERS = {"photo": 0.5, "texture": 0.2, "procedural": 0.3}


@functools.cache
def load_source(name: str) -> np.ndarray:
    """An skimage.data image as float32 RGB in [0,1], resized so its short side is CANVAS."""
    image = np.asarray(getattr(skimage.data, name)())
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    image = image[..., :3].astype(np.float32) / 255.0
    scale = CANVAS / min(image.shape[:2])
    return cv2.resize(
        image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    )


@functools.cache
def load_grey(name: str) -> np.ndarray:
    """An skimage.data image as a (H,W,1) float32 grey level in [0,1]."""
    return load_source(name).mean(axis=2, keepdims=True)


def tinted(grey: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Colour grey images (...,1) with two random tints (dark → light)."""
    dark, light = rng.uniform(0.0, 0.5, 3).astype(np.float32), rng.uniform(0.5, 1.0, 3).astype(np.float32)
    return dark + grey * (light - dark)


def recoloured(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Colour images (...,3) in [0,1] with a random brightness and white balance."""
    gain = rng.uniform(0.8, 1.2) * rng.uniform(0.9, 1.1, 3).astype(np.float32)
    return np.clip(images * gain, 0, 1)


def to_uint8_canvas(image: np.ndarray) -> np.ndarray:
    """Float images in [0,1] → uint8."""
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


@functools.cache
def skimage_canvas(name: str, grey: bool) -> np.ndarray:
    """A training skimage.data picture as uint8: RGB, or (H,W,1) grey for a texture."""
    return to_uint8_canvas(load_grey(name) if grey else load_source(name))


def wallpaper_roots() -> tuple[str, ...]:
    """The folders searched for wallpapers: $VIDM_WALLPAPERS if set, else WALLPAPER_ROOTS."""
    listed = os.environ.get("VIDM_WALLPAPERS")
    return WALLPAPER_ROOTS if listed is None else tuple(p for p in listed.split(os.pathsep) if p)


@functools.cache
def find_wallpapers(roots: tuple[str, ...]) -> tuple[Path, ...]:
    """One file per picture under `roots`, sorted.

    A picture shipped at several sizes (plasma's contents/images/<W>x<H>.jpg, mate's
    Elephants_<W>x<H>.jpg) counts once, as its largest file; links count as their target; preview
    screenshots, SVGs and files under WALLPAPER_MIN_BYTES are skipped.
    """
    pictures: dict[tuple[Path, str], Path] = {}
    for root in roots:
        for path in sorted(Path(root).rglob("*")):
            if path.suffix.lower() not in WALLPAPER_SUFFIXES or path.stem == "screenshot":
                continue
            target = path.resolve()
            if not target.is_file() or target.stat().st_size < WALLPAPER_MIN_BYTES:
                continue
            key = (path.parent, re.sub(r"_?\d+x\d+$", "", path.stem))
            best = pictures.get(key)
            if best is None or (target.stat().st_size, target.name) > (best.stat().st_size, best.name):
                pictures[key] = target
    return tuple(sorted(set(pictures.values())))


@functools.cache
def wallpaper_canvas(path: Path) -> np.ndarray:
    """A wallpaper as uint8 RGB with short side WALLPAPER_SIDE; transparency over mid grey."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"{path}: not a decodable image")
    if image.dtype != np.uint8:
        image = (image.astype(np.float32) * (255 / np.iinfo(image.dtype).max)).round().astype(np.uint8)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[2] in (2, 4):
        alpha = image[..., -1:].astype(np.float32) / 255
        image = (image[..., :-1] * alpha + 128 * (1 - alpha)).round().astype(np.uint8)
    image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB if image.shape[2] == 1 else cv2.COLOR_BGR2RGB)
    scale = WALLPAPER_SIDE / min(image.shape[:2])
    return cv2.resize(
        image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    )


def procedural_scene(rng: np.random.Generator, size: int) -> np.ndarray:
    """A tabletop-like uint8 RGB scene: a shaded surface with boxes, plates, bottles and stripes, some of
    them textured with a training photograph."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base, tilt = rng.uniform(0.2, 0.9, 3), rng.uniform(-0.3, 0.3, (2, 3))
    scene = np.clip(base + x[..., None] * tilt[0] + y[..., None] * tilt[1], 0, 1).astype(np.float32)
    for _ in range(rng.integers(16, 40)):
        colour = tuple(float(c) for c in rng.uniform(0, 1, 3))
        shape = np.zeros((size, size), np.uint8)
        draw_object(shape, rng, size)
        inside = shape > 0
        scene[inside] = textured_layer(rng, size)[inside] if rng.random() < 0.3 else colour
    noise = rng.normal(0, 0.02, scene.shape).astype(np.float32)
    return to_uint8_canvas(cv2.GaussianBlur(scene, (3, 3), 0) + noise)


def draw_object(mask: np.ndarray, rng: np.random.Generator, size: int) -> None:
    """Fill one random box, ellipse, stroke or polygon into `mask` with 255."""
    cx, cy = (int(v) for v in rng.integers(0, size, 2))
    kind = rng.integers(4)
    if kind == 0:
        w, h = (int(v) for v in rng.integers(size // 24, size // 6, 2))
        cv2.rectangle(mask, (cx - w, cy - h), (cx + w, cy + h), 255, -1)
    elif kind == 1:
        axes = tuple(int(v) for v in rng.integers(size // 30, size // 8, 2))
        cv2.ellipse(mask, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
    elif kind == 2:
        end = tuple(int(v) for v in rng.integers(0, size, 2))
        cv2.line(mask, (cx, cy), end, 255, int(rng.integers(2, size // 32)))
    else:
        pts = rng.integers(-size // 8, size // 8, (int(rng.integers(3, 7)), 2)) + [cx, cy]
        cv2.fillPoly(mask, [pts.astype(np.int32)], 255)


def textured_layer(rng: np.random.Generator, size: int) -> np.ndarray:
    """A (size,size,3) float32 random crop of a training scikit-image picture (textures tinted)."""
    grey = rng.random() < 0.5
    canvas = skimage_canvas(str(rng.choice(TRAIN_TEXTURES if grey else TRAIN_PHOTOS)), grey)
    side = int(rng.integers(size // 4, min(canvas.shape[:2]) + 1))
    top = int(rng.integers(0, canvas.shape[0] - side + 1))
    left = int(rng.integers(0, canvas.shape[1] - side + 1))
    patch = cv2.resize(canvas[top : top + side, left : left + side], (size, size)).astype(np.float32) / 255
    return tinted(patch[..., None], rng) if grey else patch


@functools.cache
def procedural_canvas(index: int) -> np.ndarray:
    """Tabletop scene `index` of the per-process bank."""
    return procedural_scene(np.random.default_rng([PROCEDURAL_SEED, index]), PROCEDURAL_SIDE)


@dataclass(frozen=True)
class TrainingScene:
    """A training canvas (uint8, RGB or grey (H,W,1) to be tinted) and where it came from."""

    canvas: np.ndarray
    name: str

    @property
    def grey(self) -> bool:
        return self.canvas.shape[2] == 1


def installed_wallpapers() -> tuple[Path, ...]:
    """The wallpapers under `wallpaper_roots()`; an error naming the folders when there are none."""
    roots = wallpaper_roots()
    wallpapers = find_wallpapers(roots)
    if not wallpapers:
        where = ", ".join(roots) or "no folder ($VIDM_WALLPAPERS is empty)"
        raise FileNotFoundError(
            f"no wallpapers found in {where}: install them with `make wallpapers` (docs/small_model.md)"
        )
    return wallpapers


def scene_sources(use_wallpapers: bool) -> str:
    """What training clips are filmed in, as JSON: the scikit-image pictures, the tabletop bank and,
    with `use_wallpapers`, how many wallpapers from which folders, with a digest of their names and sizes."""
    sources: dict[str, object] = {
        "photos": list(TRAIN_PHOTOS),
        "textures": list(TRAIN_TEXTURES),
        "procedural": PROCEDURAL_SCENES,
        "wallpapers": None,
    }
    if use_wallpapers:
        wallpapers = installed_wallpapers()
        listing = "\n".join(f"{path.name} {path.stat().st_size}" for path in wallpapers)
        sources["wallpapers"] = {
            "count": len(wallpapers),
            "folders": list(wallpaper_roots()),
            "sha256": hashlib.sha256(listing.encode()).hexdigest(),
        }
    return json.dumps(sources)


def pick_training_scene(rng: np.random.Generator, use_wallpapers: bool = False) -> TrainingScene:
    """A random training canvas: a wallpaper (only with `use_wallpapers`), an skimage photo or
    texture, or a tabletop scene."""
    wallpapers = installed_wallpapers() if use_wallpapers else ()
    weights = KIND_WEIGHTS if use_wallpapers else KIND_WEIGHTS_WITHOUT_WALLPAPERS
    kind = str(rng.choice(list(weights), p=list(weights.values())))
    if kind == "wallpaper":
        path = wallpapers[rng.integers(len(wallpapers))]
        return TrainingScene(wallpaper_canvas(path), f"wallpaper:{path}")
    if kind == "procedural":
        index = int(rng.integers(PROCEDURAL_SCENES))
        return TrainingScene(procedural_canvas(index), f"procedural:{index}")
    name = str(rng.choice(TRAIN_PHOTOS if kind == "photo" else TRAIN_TEXTURES))
    return TrainingScene(skimage_canvas(name, kind == "texture"), f"{kind}:{name}")
