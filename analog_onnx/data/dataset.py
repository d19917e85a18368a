"""The in-memory dataset every reader returns, and the checks that make one trustworthy."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from analog_onnx.arguments import FLOAT32_MAX
from analog_onnx.errors import AnalogError

MAX_BYTES_ENV = "ANALOG_ONNX_MAX_DATA_BYTES"
DEFAULT_MAX_BYTES = 1 << 30  # one array; MNIST is 47 MB, CIFAR-100's training images 150 MB


def max_data_bytes() -> int:
    """The most bytes a reader may allocate for one array: ``$ANALOG_ONNX_MAX_DATA_BYTES`` or 1 GiB."""
    raw = os.environ.get(MAX_BYTES_ENV, "")
    try:
        return int(float(raw)) if raw else DEFAULT_MAX_BYTES
    except ValueError:
        raise AnalogError(f"{MAX_BYTES_ENV}={raw!r} is not a number of bytes") from None


def check_declared_size(nbytes: int, source: str) -> None:
    """Refuse, before reading, an array whose header declares more than :func:`max_data_bytes`:
    a small compressed file can claim gigabytes."""
    limit = max_data_bytes()
    if nbytes > limit:
        raise AnalogError(f"{source}: declares {nbytes / 2**30:.3g} GiB of data, more than the limit of "
                          f"{limit / 2**30:.3g} GiB (set {MAX_BYTES_ENV} to allow more)")


@dataclass(frozen=True)
class Dataset:
    x: np.ndarray  # float32, [N, ...]
    y: np.ndarray  # int64, [N]
    num_classes: int
    name: str

    def __post_init__(self) -> None:
        """Samples with NaN or infinity would be scored as if they meant something: refuse them."""
        if self.x.dtype.kind == "f" and len(self.x):
            bad = int(np.count_nonzero(~np.isfinite(self.x).reshape(len(self.x), -1).all(axis=1)))
            if bad:
                raise AnalogError(f"{self.name}: {bad} of {len(self.x)} samples contain NaN or infinite values")

    def __len__(self) -> int:
        return len(self.y)

    def limit(self, n: int | None) -> Dataset:
        """The first ``n`` samples (all of them for None)."""
        if n is not None and n < 1:
            raise AnalogError(f"--limit must be >= 1, got {n}")
        if n is None or n >= len(self):
            return self
        return Dataset(self.x[:n], self.y[:n], self.num_classes, self.name)


def checked_dataset(x: np.ndarray, y: np.ndarray, name: str, num_classes: int | None = None) -> Dataset:
    """A :class:`Dataset` from arrays a file gave us: numeric x, integral non-negative labels,
    one label per sample. ``num_classes`` defaults to the largest label + 1."""
    x, y = np.asarray(x), np.asarray(y)
    if x.dtype.kind not in "biuf":
        raise AnalogError(f"{name}: samples must be numeric, got dtype {x.dtype}")
    if x.ndim < 2:
        raise AnalogError(f"{name}: samples must have shape [N, ...], got shape {list(x.shape)}")
    if x.dtype.kind == "f" and x.dtype.itemsize > 4 and x.size:  # models read float32
        largest = float(np.abs(x[np.isfinite(x)]).max(initial=0))
        if largest > FLOAT32_MAX:
            raise AnalogError(f"{name}: samples hold {largest:.4g}, beyond the float32 range the models read "
                              f"(at most {FLOAT32_MAX:.4g})")
    if y.ndim != 1 or len(y) != len(x):
        raise AnalogError(f"{name}: need one label per sample, got labels of shape {list(y.shape)} "
                          f"for {len(x)} samples")
    if len(y) == 0:
        raise AnalogError(f"{name}: no samples")
    if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        y = y.astype(np.int64)
    if y.dtype.kind not in "iub":
        raise AnalogError(f"{name}: labels must be integers, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.min() < 0:
        raise AnalogError(f"{name}: labels must be >= 0, found {int(y.min())}")
    largest = int(y.max())
    if num_classes is None:
        num_classes = largest + 1
    elif largest >= num_classes:
        raise AnalogError(f"{name}: label {largest} is out of range for {num_classes} classes")
    return Dataset(np.ascontiguousarray(x, dtype=np.float32), y, num_classes, name)


def existing_path(path: str | None, kind: str, *, directory: bool) -> Path:
    """The user's ``KIND:PATH`` path, ``~`` expanded, checked to exist as a file or directory."""
    what = "DIR" if directory else "FILE"
    if not path:
        raise AnalogError(f"data kind {kind} needs a path: --data {kind}:{what}")
    resolved = Path(path).expanduser()
    if directory and not resolved.is_dir():
        raise AnalogError(f"{kind}: {path} is not a directory")
    if not directory and not resolved.is_file():
        raise AnalogError(f"{kind}: {path} is not a file")
    return resolved
