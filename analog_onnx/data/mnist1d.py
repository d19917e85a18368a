"""``mnist1d``: the MNIST-1D benchmark (Greydanus), generated offline by the ``mnist1d`` package
with its default arguments and fixed seed, then cached as a plain ``.npz`` in the user's cache
directory (``$ANALOG_ONNX_CACHE``, else ``$XDG_CACHE_HOME/analog-onnx``, else ``~/.cache/analog-onnx``).

Samples are returned as ``[N, 1, 40]`` (one channel, 40 steps) so per-channel normalization and
1-D convolutions see the usual layout; an MLP's ``[N, 40]`` input takes them by reshaping.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from analog_onnx.cache import cache_dir
from analog_onnx.data.dataset import Dataset, checked_dataset
from analog_onnx.errors import AnalogError
from analog_onnx.files import write_with

CACHE_FILE = "mnist1d-default-seed42.npz"  # named after the generator arguments it holds


def _generate() -> dict[str, np.ndarray]:
    """Build the data set; the generator seeds numpy's and Python's global RNGs, so we restore them."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise AnalogError("data kind mnist1d needs the mnist1d package: pip install mnist1d") from None
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
    return {"x_train": data["x"], "y_train": data["y"], "x_test": data["x_test"], "y_test": data["y_test"]}


def _save(arrays: dict[str, np.ndarray], file: Path) -> None:
    """Write the cache atomically; a cache we cannot write is not an error, only slower next time."""
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        write_with(file, lambda handle: np.savez(handle, **arrays), force=True)
    except (OSError, AnalogError):
        pass


def _load_cached(file: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(file, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except (OSError, ValueError, KeyError):
        return None  # missing or damaged: regenerate
    shapes_fit = all(arrays[f"x_{s}"].ndim == 2 and arrays[f"y_{s}"].ndim == 1 for s in ("train", "test"))
    return arrays if shapes_fit else None  # not what the generator writes: regenerate


def read_mnist1d(path: str | None, split: str) -> Dataset:
    file = cache_dir() / CACHE_FILE
    arrays = _load_cached(file)
    if arrays is None:
        arrays = _generate()
        _save(arrays, file)
    x = arrays[f"x_{split}"].astype(np.float32)[:, None, :]
    return checked_dataset(x, arrays[f"y_{split}"], "mnist1d", 10)
