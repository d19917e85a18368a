"""``imagefolder:DIR``: one sub-directory per class (sorted names give the label numbers).

When ``DIR`` has a ``train`` or ``test`` sub-directory the split picks it; otherwise ``DIR``
itself is the data. Which files are read:

1. A class is a sub-folder of the data folder whose name does not start with ``.``.
2. A class's images are the files with an image extension anywhere under its folder: sub-folders
   are read too (as torchvision's ImageFolder does), linked folders followed, each folder once.
   Names starting with ``.`` (``.DS_Store``, macOS's ``._x.png``) and other extensions are skipped.
3. An entry with an image extension that is not a regular file (a FIFO, a socket, a device, a
   broken link) is refused, named: reading it could block forever or mean nothing.
4. A class folder without images is refused, named: its label would be a class with no samples.

All images must share one size. Values keep their meaning at every bit
depth: integer pixels are divided by their depth's largest value (255 for 8-bit, 65535 for
16-bit), so 8- and 16-bit images mix; floating-point images (TIFF mode ``F``) keep their values
and do not mix with integer ones. Grayscale images (1-bit, 8-bit, 16-bit, float, a palette of
grays) give one channel, anything else (a colour palette, CMYK, YCbCr ...) is converted to RGB, and
a folder mixing both becomes RGB.
An alpha channel is dropped only when every pixel is opaque; a transparent pixel, or an image of
several frames (an animation, a multi-page TIFF), is refused: no single meaning to read.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from analog_onnx.data.dataset import Dataset, check_declared_size, checked_dataset, existing_path
from analog_onnx.errors import AnalogError

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
GRAY_DEPTHS = {"1": 255, "L": 255, "LA": 255, "La": 255, "I;16": 65535, "I;16L": 65535, "I;16B": 65535,
               "I;16N": 65535, "I": 65535, "F": None}  # grayscale modes: the largest value (None: float as is)
ALPHA_MODES = {"LA", "La", "PA", "RGBA", "RGBa"}


def _split_root(root: Path, split: str) -> Path:
    if (root / split).is_dir():
        return root / split
    if any((root / s).is_dir() for s in ("train", "test")):
        raise AnalogError(f"imagefolder: {root.name} has split folders but no {split}/")
    return root


def _class_images(folder: Path) -> list[Path]:
    """The images under one class folder, by rules 2 and 3 of the module docstring, sorted."""
    images: list[Path] = []
    seen: set[str] = set()

    def refuse(error: OSError) -> None:
        raise AnalogError(f"imagefolder: cannot list {error.filename}: {error.strerror}")

    for top, folders, names in os.walk(folder, onerror=refuse, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:  # a link back up the tree, or a second link to one folder
            folders.clear()
            continue
        seen.add(real)
        folders[:] = [f for f in folders if not f.startswith(".")]
        for name in names:
            file = Path(top, name)
            if name.startswith(".") or file.suffix.lower() not in EXTENSIONS:
                continue
            if not file.is_file():
                raise AnalogError(f"imagefolder: {file.relative_to(folder.parent).as_posix()} is not a regular file "
                                  "(a FIFO, socket, device or broken link); remove it or give it another name")
            images.append(file)
    return sorted(images)


def read_imagefolder(path: str | None, split: str) -> Dataset:
    root = _split_root(existing_path(path, "imagefolder", directory=True), split)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise AnalogError(f"imagefolder: no images under {root}: it has no class folders (one folder of images "
                          "per class)")
    files: list[tuple[Path, str, int]] = []  # file, its name under the data folder, label
    for label, name in enumerate(classes):
        images = _class_images(root / name)
        if not images:
            raise AnalogError(f"imagefolder: class folder {name} has no images (files ending in "
                              f"{', '.join(sorted(EXTENSIONS))}); add some or remove the folder")
        files += [(file, file.relative_to(root).as_posix(), label) for file in images]
    arrays = [_pixels(file, shown) for file, shown, _ in files]
    if len({top is None for _, top in arrays}) > 1:  # float and integer images
        floating = next(shown for (_, top), (_, shown, _) in zip(arrays, files, strict=True) if top is None)
        raise AnalogError(f"imagefolder: {floating} holds floating-point pixels and other "
                          "images integer ones: their values mean different things; convert them to one kind")
    sizes = sorted({a.shape[:2] for a, _ in arrays})
    if len(sizes) > 1:
        (h1, w1), (h2, w2) = sizes[:2]
        raise AnalogError(f"imagefolder: images differ in size ({w1}x{h1} and {w2}x{h2}); "
                          "resize them to one size first")
    scaled = [a.astype(np.float32) / np.float32(top) if top else a.astype(np.float32) for a, top in arrays]
    if any(a.ndim == 3 for a in scaled):  # some colour images: every image becomes RGB
        scaled = [a if a.ndim == 3 else np.repeat(a[:, :, None], 3, axis=2) for a in scaled]
        x = np.stack(scaled).transpose(0, 3, 1, 2)
    else:
        x = np.stack(scaled)[:, None]
    y = np.array([label for _, _, label in files], dtype=np.int64)
    return checked_dataset(x, y, f"imagefolder:{root.name}", len(classes))


def _pixels(file: Path, name: str) -> tuple[np.ndarray, int | None]:
    """The pixels of one still image (``name``: as the user sees it), [H, W] grayscale or [H, W, 3]
    RGB, and the largest value of their bit depth (None for floating-point pixels, used as they are)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():  # Pillow only warns about a decompression bomb of up to 2x its limit
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as image:
                check_declared_size(image.width * image.height * 3 * 4, f"imagefolder: {name}")  # before decoding
                if getattr(image, "n_frames", 1) > 1:
                    raise AnalogError(f"imagefolder: {name} has {image.n_frames} frames (an animation or a "
                                      "multi-page file); give one image per file")
                return _values(image, name)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise AnalogError(f"imagefolder: cannot read {name}: {e}") from None


def _values(image: Any, name: str) -> tuple[np.ndarray, int | None]:
    """Grayscale modes at their own depth; every other mode as 8-bit RGB, its alpha checked opaque."""
    mode = image.mode
    if mode in ALPHA_MODES or (mode in ("P", "PA") and "transparency" in image.info):
        alpha = np.asarray(image.convert("RGBA"))[..., 3]
        if (alpha < 255).any():
            raise AnalogError(f"imagefolder: {name} has transparent pixels; flatten it onto a background first")
    if mode not in GRAY_DEPTHS:
        rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
        if mode in ("P", "PA") and (rgb == rgb[..., :1]).all():  # a gray palette: a grayscale image
            return rgb[..., 0], 255
        return rgb, 255
    if mode in ("1", "LA", "La"):
        image = image.convert("L")
    pixels = np.asarray(image)
    if mode == "I" and (pixels.min() < 0 or pixels.max() > 65535):
        raise AnalogError(f"imagefolder: {name} holds 32-bit integer pixels beyond 16 bits "
                          f"({pixels.min()} to {pixels.max()}); convert it to 8 or 16 bits per channel")
    return pixels, GRAY_DEPTHS[mode]
