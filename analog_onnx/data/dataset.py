"""The in-memory dataset every reader returns, and the checks that make one trustworthy."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from analog_onnx.arguments import FLOAT32_MAX, spelled
from analog_onnx.errors import AnalogError
from analog_onnx.files import readable_file

MAX_BYTES_ENV = "ANALOG_ONNX_MAX_DATA_BYTES"
DEFAULT_MAX_BYTES = 1 << 30  # one array; MNIST is 47 MB, CIFAR-100's training images 150 MB
MAX_CLASSES = 1 << 20  # one output each: beyond real label sets and vocabularies, far below what cannot be allocated


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
    """Samples and labels. Classification: ``y`` [N]. Token sequences: ``x`` int64 token ids
    [N, T]; ``y`` [N, T] holds next-token targets (negative: not scored) or [N] sequence classes,
    and ``mask`` [N, T] the attention mask a model with such an input reads (1: a real token)."""

    x: np.ndarray  # float32 [N, ...], or int64 token ids [N, T]
    y: np.ndarray  # int64, [N] or [N, T]
    num_classes: int  # classes, or the vocabulary size for next-token targets
    name: str
    mask: np.ndarray | None = None  # int64 [N, T], token data only

    def __post_init__(self) -> None:
        """Empty samples (a 0 in the shape) and samples with NaN or infinity would be trained on and
        scored as if they meant something: refuse them."""
        if 0 in self.x.shape[1:]:
            raise AnalogError(f"{self.name}: samples must have at least one value, got shape {list(self.x.shape)}")
        if self.x.dtype.kind == "f" and len(self.x):
            bad = int(np.count_nonzero(~np.isfinite(self.x).reshape(len(self.x), -1).all(axis=1)))
            if bad:
                raise AnalogError(f"{self.name}: {bad} of {len(self.x)} samples contain NaN or infinite values")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def is_tokens(self) -> bool:
        """Token ids rather than float samples."""
        return self.x.dtype.kind in "iu"

    @property
    def scored(self) -> int:
        """How many predictions a pass over the data scores: samples, or scored token positions."""
        return int(np.count_nonzero(self.y >= 0))

    def limit(self, n: int | None) -> Dataset:
        """The first ``n`` samples (all of them for None)."""
        if n is not None and n < 1:
            raise AnalogError(f"{spelled('limit')} must be >= 1, got {n}")
        if n is None or n >= len(self):
            return self
        return Dataset(self.x[:n], self.y[:n], self.num_classes, self.name,
                       None if self.mask is None else self.mask[:n])


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
    whole = y.dtype.kind in "iub" or (y.dtype.kind == "f" and np.isfinite(y).all() and (y == np.round(y)).all())
    if not whole:
        raise AnalogError(f"{name}: labels must be integers, got dtype {y.dtype}")
    if num_classes is not None and y.max() >= num_classes:
        raise AnalogError(f"{name}: label {y.max().item()} is out of range for {num_classes} classes")
    y = as_int64(y, "label", name)
    classes = int(y.max()) + 1 if num_classes is None else num_classes
    return Dataset(np.ascontiguousarray(x, dtype=np.float32), y, classes, name)


def as_int64(values: np.ndarray, what: str, name: str, lowest: int | None = 0) -> np.ndarray:
    """Whole-numbered ``values`` (labels, token ids) as int64, their range checked in their own dtype
    first: a cast wraps uint64 past int64 to negative numbers and makes garbage of huge floats."""
    smallest, largest = values.min().item(), values.max().item()
    if lowest is not None and smallest < lowest:
        raise AnalogError(f"{name}: {what}s must be >= {lowest}, found {smallest}")
    if largest >= MAX_CLASSES:
        raise AnalogError(f"{name}: {what} {largest} is too large: a model here has at most {MAX_CLASSES} "
                          "classes or tokens (one output each)")
    return values.astype(np.int64)


def checked_token_dataset(ids: np.ndarray, labels: np.ndarray, name: str, vocabulary: int | None = None,
                          mask: np.ndarray | None = None) -> Dataset:
    """A token :class:`Dataset` from arrays a file or a tokenizer gave us: integer ids [N, T] in
    the vocabulary, labels [N, T] (next-token targets, negative = not scored) or [N] (classes),
    an optional 0/1 mask [N, T]. Next-token classes are the vocabulary (default: the largest id
    or target + 1); sequence classes are the labels'."""
    ids, labels = np.asarray(ids), np.asarray(labels)
    if ids.dtype.kind not in "iu":
        raise AnalogError(f"{name}: token ids must be integers, got dtype {ids.dtype}")
    if labels.dtype.kind not in "iu":
        raise AnalogError(f"{name}: labels must be integers, got dtype {labels.dtype}")
    if ids.ndim != 2 or 0 in ids.shape:
        raise AnalogError(f"{name}: token ids must have shape [N, T] with N, T >= 1, got {list(ids.shape)}")
    if labels.shape not in (ids.shape, ids.shape[:1]):
        raise AnalogError(f"{name}: labels of shape {list(labels.shape)} fit neither the windows "
                          f"{list(ids.shape)} (next-token targets) nor one class per window [{len(ids)}]")
    ids = as_int64(ids, "token id", name)
    labels = as_int64(labels, "target", name, None) if labels.ndim == 2 else as_int64(labels, "class label", name)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != ids.shape or mask.dtype.kind not in "iub" or not np.isin(mask, (0, 1)).all():
            raise AnalogError(f"{name}: the attention mask must be 0/1 integers of the ids' shape {list(ids.shape)}")
        if labels.ndim == 2:
            labels = np.where(mask.astype(bool), labels, -1)  # padding is not predicted
    if labels.ndim == 2:
        labels = np.where(labels < 0, -1, labels)  # not scored, whatever negative marks it (Hugging Face: -100)
    if not np.any(labels >= 0):
        raise AnalogError(f"{name}: no label to score (every target is negative or masked)")
    if vocabulary is not None and int(ids.max()) >= vocabulary:
        raise AnalogError(f"{name}: token id {int(ids.max())} is out of range for a vocabulary of {vocabulary}")
    if labels.ndim == 1:  # sequence classification: classes are the labels'
        classes = int(labels.max()) + 1
    else:  # next-token targets are tokens
        classes = vocabulary if vocabulary is not None else max(int(ids.max()), int(labels.max())) + 1
        if int(labels.max()) >= classes:
            raise AnalogError(f"{name}: target {int(labels.max())} is out of range for a vocabulary of {classes}")
    return Dataset(ids, labels, classes, name,
                   None if mask is None else mask.astype(np.int64))


def existing_path(path: str | None, kind: str, *, directory: bool) -> Path:
    """The user's ``KIND:PATH`` path, ``~`` expanded, checked to exist as a file (one this process
    may read) or directory."""
    what = "DIR" if directory else "FILE"
    if not path:
        raise AnalogError(f"data kind {kind} needs a path: --data {kind}:{what}")
    resolved = Path(path).expanduser()
    if directory and not resolved.is_dir():
        raise AnalogError(f"{kind}: {path} is not a directory")
    if not directory and not resolved.is_file():
        raise AnalogError(f"{kind}: {path} is not a file")
    return resolved if directory else readable_file(resolved, f"{kind} file")  # is_zipfile hides a refusal
