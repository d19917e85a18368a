"""``mnist:DIR``: IDX files as MNIST and Fashion-MNIST ship them, plain or gzipped.

Looks for ``train-images-idx3-ubyte`` / ``train-labels-idx1-ubyte`` (test: ``t10k-...``), also
with ``.`` for the last ``-`` and a ``.gz`` suffix, the spellings the common mirrors use.
"""

from __future__ import annotations

import gzip
import math
from pathlib import Path
from typing import BinaryIO

import numpy as np

from analog_onnx.data.dataset import Dataset, check_declared_size, checked_dataset, existing_path
from analog_onnx.errors import AnalogError

# IDX type codes: big-endian element types
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
PREFIXES = {"train": "train", "test": "t10k"}


def read_idx(stream: BinaryIO, source: str) -> np.ndarray:
    """An IDX array: magic ``0 0 type ndim``, ``ndim`` big-endian uint32 sizes, then the data.

    The declared size is checked against the data limit before the data is read, and exactly
    that many bytes are read, so a small gzip file cannot expand into memory unbounded.
    """
    magic = stream.read(4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in IDX_TYPES:
        raise AnalogError(f"{source}: not an IDX file (bad magic number)")
    ndim = magic[3]
    sizes = stream.read(4 * ndim)
    if len(sizes) < 4 * ndim:
        raise AnalogError(f"{source}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(sizes, ">u4"))
    dtype = np.dtype(IDX_TYPES[magic[2]])
    expected = math.prod(shape) * dtype.itemsize  # Python integers: no overflow
    check_declared_size(expected, source)
    data = stream.read(expected + 1)
    if len(data) != expected:
        found = f"{len(data)}" if len(data) < expected else "more"
        raise AnalogError(f"{source}: IDX header says {list(shape)} ({expected} bytes) "
                          f"but the file has {found} data bytes")
    return np.frombuffer(data, dtype).reshape(shape)


def _find(root: Path, prefix: str, what: str, dims: int) -> Path:
    names = [f"{prefix}-{what}{sep}idx{dims}-ubyte{gz}" for sep in "-." for gz in ("", ".gz")]
    for name in names:
        if (root / name).is_file():
            return root / name
    raise AnalogError(f"mnist: {root.name} has no {names[0]} (or .gz)")


def _read(file: Path) -> np.ndarray:
    try:
        with gzip.open(file) if file.suffix == ".gz" else open(file, "rb") as stream:
            return read_idx(stream, f"mnist: {file.name}")
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise AnalogError(f"mnist: cannot read {file.name}: {e}") from None


def read_mnist(path: str | None, split: str) -> Dataset:
    root = existing_path(path, "mnist", directory=True)
    prefix = PREFIXES[split]
    images = _read(_find(root, prefix, "images", 3))
    labels = _read(_find(root, prefix, "labels", 1))
    if images.ndim != 3:
        raise AnalogError(f"mnist: images must be [N, H, W], got {list(images.shape)}")
    # other types go as they are: checked_dataset refuses values past float32's range before it casts
    x = images[:, None] / np.float32(255.0) if images.dtype == np.uint8 else images[:, None]
    return checked_dataset(x, labels, "mnist")
