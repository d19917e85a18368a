"""``imagefolder:DIR``: one sub-directory per class (sorted names give the label numbers).

When ``DIR`` has a ``train`` or ``test`` sub-directory the split picks it; otherwise ``DIR``
itself is the data. All images must share one size; grayscale folders give one channel,
anything else is converted to RGB (and a folder mixing both becomes RGB).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from analog_onnx.data.dataset import Dataset, check_declared_size, checked_dataset, existing_path
from analog_onnx.errors import AnalogError

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
GRAY_MODES = {"1", "L", "LA"}


def _split_root(root: Path, split: str) -> Path:
    if (root / split).is_dir():
        return root / split
    if any((root / s).is_dir() for s in ("train", "test")):
        raise AnalogError(f"imagefolder: {root.name} has split folders but no {split}/")
    return root


def read_imagefolder(path: str | None, split: str) -> Dataset:
    root = _split_root(existing_path(path, "imagefolder", directory=True), split)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    files = [(f, label) for label, name in enumerate(classes)
             for f in sorted((root / name).iterdir()) if f.suffix.lower() in EXTENSIONS]
    if not files:
        raise AnalogError(f"imagefolder: no images in class folders under {root}")
    arrays = [_pixels(file) for file, _ in files]
    sizes = sorted({a.shape[:2] for a in arrays})
    if len(sizes) > 1:
        (h1, w1), (h2, w2) = sizes[:2]
        raise AnalogError(f"imagefolder: images differ in size ({w1}x{h1} and {w2}x{h2}); "
                          "resize them to one size first")
    if any(a.ndim == 3 for a in arrays):  # some colour images: every image becomes RGB
        arrays = [a if a.ndim == 3 else np.repeat(a[:, :, None], 3, axis=2) for a in arrays]
        x = np.stack(arrays).transpose(0, 3, 1, 2)
    else:
        x = np.stack(arrays)[:, None]
    x = x.astype(np.float32) / np.float32(255.0)
    y = np.array([label for _, label in files], dtype=np.int64)
    return checked_dataset(x, y, f"imagefolder:{root.name}", len(classes))


def _pixels(file: Path) -> np.ndarray:
    """uint8 pixels of one image: [H, W] for grayscale, [H, W, 3] for anything else."""
    from PIL import Image, UnidentifiedImageError

    source = f"imagefolder: {file.parent.name}/{file.name}"
    try:
        with warnings.catch_warnings():  # Pillow only warns about a decompression bomb of up to 2x its limit
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as image:
                check_declared_size(image.width * image.height * 3, source)  # before decoding a pixel
                return np.asarray(image.convert("L" if image.mode in GRAY_MODES else "RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise AnalogError(f"imagefolder: cannot read {file.parent.name}/{file.name}: {e}") from None
