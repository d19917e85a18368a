"""Dataset readers for ``--data KIND[:PATH]``.

Every reader returns a :class:`Dataset` whose ``x`` is float32 in the data's natural layout,
images as NCHW scaled to [0, 1], and whose ``y`` holds int64 class labels. Normalization
(mean/std per channel) is applied later, from the model's metadata or from flags.

Kinds: ``digits`` (scikit-learn's bundled 8x8 digits), ``mnist1d`` (generated locally),
``npz:FILE``, ``cifar10:DIR`` / ``cifar100:DIR`` (python batches, unpickled safely),
``mnist:DIR`` (IDX, plain or gzip; also Fashion-MNIST) and ``imagefolder:DIR``.

Token data (``x`` int64 token ids [N, T]; see :class:`Dataset`): ``text:PATH`` (a local corpus,
split by file, byte or Hugging Face tokens) and ``tokens:FILE`` (pre-tokenized .npy/.npz). These
also have a ``validation`` split, for choices that must not look at the test split.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from analog_onnx.arguments import expect
from analog_onnx.data.cifar import read_cifar10, read_cifar100
from analog_onnx.data.dataset import Dataset, existing_path
from analog_onnx.data.idx import read_mnist
from analog_onnx.data.imagefolder import read_imagefolder
from analog_onnx.data.mnist1d import read_mnist1d
from analog_onnx.data.npz import read_npz
from analog_onnx.data.text import parse_options, read_text
from analog_onnx.data.tokens import read_tokens
from analog_onnx.errors import AnalogError

__all__ = ["READERS", "SPLITS", "Dataset", "check_data_spec", "load_dataset"]

SPLITS = ("train", "validation", "test")
VALIDATION_KINDS = ("text", "tokens")  # the kinds that have a validation split


def _digits(path: str | None, split: str) -> Dataset:
    """scikit-learn's bundled 8x8 digits, a fixed seeded stratified 80/20 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.data.reshape(-1, 1, 8, 8) / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    return Dataset(*((x_train, y_train) if split == "train" else (x_test, y_test)), 10, "digits")


READERS: dict[str, Callable[[str | None, str], Dataset]] = {
    "digits": _digits,
    "mnist1d": read_mnist1d,
    "npz": read_npz,
    "cifar10": read_cifar10,
    "cifar100": read_cifar100,
    "mnist": read_mnist,
    "imagefolder": read_imagefolder,
    "text": read_text,
    "tokens": read_tokens,
}


PATHLESS = ("digits", "mnist1d")  # bundled or generated: a path would be silently ignored
PATHS = {"npz": False, "tokens": False, "cifar10": True, "cifar100": True, "mnist": True,
         "imagefolder": True}  # path: a folder?


def check_data_spec(spec: str) -> None:
    """Refuse, without reading any data, a ``KIND[:PATH]`` of an unknown kind, a missing path, or a
    path for a kind that takes none."""
    expect(spec, str, "data spec")
    kind, colon, path = spec.partition(":")
    if kind not in READERS:
        raise AnalogError(f"unknown data kind {kind!r}; known: {', '.join(sorted(READERS))}")
    if kind in PATHLESS and colon:
        raise AnalogError(f"data kind {kind} takes no path, got {spec!r}: use --data {kind}")
    if kind in PATHS:
        existing_path(path or None, kind, directory=PATHS[kind])
    if kind == "text":
        parse_options(path or None, kind)


def load_dataset(spec: str, split: str = "test", limit: int | None = None) -> Dataset:
    """Read ``KIND[:PATH]`` (e.g. ``digits``, ``cifar10:~/data/cifar-10-batches-py``)."""
    expect(split, str, "split")
    expect(limit, int | None, "limit")
    check_data_spec(spec)
    kind, _, path = spec.partition(":")
    if split not in SPLITS:
        raise AnalogError(f"unknown split {split!r}; use {', '.join(SPLITS)}")
    if split == "validation" and kind not in VALIDATION_KINDS:
        raise AnalogError(f"data kind {kind} has no validation split (only {', '.join(VALIDATION_KINDS)} do)")
    return READERS[kind](path or None, split).limit(limit)
