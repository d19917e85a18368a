"""``cifar10:DIR`` and ``cifar100:DIR``: the "python version" batches from the CIFAR site.

Those batches are pickles, and unpickling runs code named in the file. The files may come from
anywhere, so :class:`SafeUnpickler` resolves only the few globals a pickled numpy array needs
at any protocol (5, Python 3.14's default, rebuilds arrays with ``_frombuffer``) and a latin-1
bytes helper; anything else, such as ``os.system``, is refused before it runs.
"""

from __future__ import annotations

import codecs
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from analog_onnx.data.dataset import Dataset, checked_dataset, existing_path
from analog_onnx.errors import AnalogError


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """What Python 3 protocol-2 pickles call to rebuild bytes; only the latin-1 codec is allowed."""
    if codecs.lookup(encoding).name != "iso8859-1" or not isinstance(text, str):
        raise pickle.UnpicklingError("only latin-1 text may be encoded")
    return text.encode("latin1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's _reconstruct, wherever it lives
    frombuffer = np.ndarray.__reduce_ex__(np.zeros(1), 5)[0]  # protocol 5's; refuses object dtypes
    scalar = np.float64(0).__reduce__()[0]
    allowed: dict[tuple[str, str], Any] = {("_codecs", "encode"): _latin1_bytes}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = reconstruct
        allowed[(module, "scalar")] = scalar
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(module, "_frombuffer")] = frombuffer
    for module in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "ndarray")] = np.ndarray
        allowed[(module, "dtype")] = np.dtype
    return allowed


class SafeUnpickler(pickle.Unpickler):
    """Unpickles plain containers, strings, bytes, numbers and numeric numpy arrays, nothing else."""

    ALLOWED = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def safe_unpickle(data: bytes, source: str) -> Any:
    """Load a pickle with :class:`SafeUnpickler`; any failure is one AnalogError naming ``source``."""
    try:
        return SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as e:
        raise AnalogError(f"{source}: not a plain data pickle ({e})") from None
    except Exception as e:  # truncated or corrupt input raises anything from EOFError to ValueError
        raise AnalogError(f"{source}: cannot unpickle: {type(e).__name__}: {e}") from None


def _field(batch: Any, key: str, source: str) -> Any:
    if not isinstance(batch, dict):
        raise AnalogError(f"{source}: expected a dict batch, got {type(batch).__name__}")
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise AnalogError(f"{source}: batch has no {key!r} entry")


def _read_batch(file: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    source = f"{file.parent.name}/{file.name}"
    batch = safe_unpickle(file.read_bytes(), source)
    data = np.asarray(_field(batch, "data", source))
    labels = np.asarray(_field(batch, label_key, source))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise AnalogError(f"{source}: 'data' must be uint8 [N, 3072], got {data.dtype} {list(data.shape)}")
    if labels.shape != (len(data),) or labels.dtype.kind not in "iu":
        raise AnalogError(f"{source}: need {len(data)} integer labels, got {labels.dtype} {list(labels.shape)}")
    return data, labels


def _read_cifar(kind: str, path: str | None, split: str, files: dict[str, list[str]],
                label_key: str, num_classes: int) -> Dataset:
    root = existing_path(path, kind, directory=True)
    names = files[split]
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise AnalogError(f"{kind}: {path} lacks {', '.join(missing)} (expected the python-version batches)")
    parts = [_read_batch(root / name, label_key) for name in names]
    data = np.concatenate([d for d, _ in parts])
    x = data.reshape(-1, 3, 32, 32).astype(np.float32) / np.float32(255.0)
    y = np.concatenate([labels for _, labels in parts])
    return checked_dataset(x, y, kind, num_classes)


CIFAR10_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
CIFAR100_FILES = {"train": ["train"], "test": ["test"]}


def read_cifar10(path: str | None, split: str) -> Dataset:
    return _read_cifar("cifar10", path, split, CIFAR10_FILES, "labels", 10)


def read_cifar100(path: str | None, split: str) -> Dataset:
    """The 100 fine labels."""
    return _read_cifar("cifar100", path, split, CIFAR100_FILES, "fine_labels", 100)
