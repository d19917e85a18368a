"""``tokens:FILE``: pre-tokenized windows, as ``.npy`` or ``.npz`` (read without pickle).

- ``.npy``: integer token ids [N, T]; each position's target is the next token of its window
  (the last position has none and is not scored).
- ``.npz``: ``input_ids`` [N, T] (or ``input_ids_{split}`` when one file holds several splits),
  optional ``attention_mask`` [N, T] (0 = padding, never scored), optional ``labels``: [N, T]
  next-token targets (negative = not scored, as Hugging Face's -100) or [N] sequence classes;
  without labels the targets are the next tokens. An optional scalar ``vocab_size`` sets the
  vocabulary (and the chance level); otherwise it is the largest id + 1.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np

from analog_onnx.data.dataset import MAX_CLASSES, Dataset, check_declared_size, checked_token_dataset, existing_path
from analog_onnx.data.npz import HEADER_READERS, check_declared_sizes
from analog_onnx.errors import AnalogError

KEYS = ("input_ids", "attention_mask", "labels", "vocab_size")


def next_tokens(ids: np.ndarray) -> np.ndarray:
    """Each position's target: the next token of its window; -1 (not scored) at the end."""
    targets = np.full(ids.shape, -1, np.int64)
    targets[:, :-1] = ids[:, 1:]
    return targets


def _read_npy(file: Path, source: str) -> np.ndarray:
    with open(file, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        if version not in HEADER_READERS:
            raise AnalogError(f"{source}: .npy format {version} is not supported")
        shape, _, dtype = HEADER_READERS[version](handle)
    check_declared_size(math.prod(shape) * dtype.itemsize, source)
    return np.load(file, allow_pickle=False)


def _read_npz(file: Path, split: str, source: str) -> dict[str, np.ndarray]:
    """The known arrays of an archive, ``KEY_{split}`` preferred over ``KEY``."""
    with np.load(file, allow_pickle=False) as archive:
        members = set(archive.files)
        chosen = {key: f"{key}_{split}" if f"{key}_{split}" in members else key for key in KEYS}
        chosen = {key: member for key, member in chosen.items() if member in members}
        if "input_ids" not in chosen:
            raise AnalogError(f"{source}: needs an array input_ids (or input_ids_{split}); it has "
                              f"{', '.join(sorted(members)) or 'none'}")
        check_declared_sizes(file, list(chosen.values()), source)
        return {key: archive[member] for key, member in chosen.items()}


def read_tokens(path: str | None, split: str) -> Dataset:
    file = existing_path(path, "tokens", directory=False)
    name = f"tokens:{file.name}"
    try:
        if not zipfile.is_zipfile(file):
            ids = _read_npy(file, name)
            return checked_token_dataset(ids, next_tokens(ids) if ids.ndim == 2 else ids, name)
        arrays = _read_npz(file, split, name)
    except ValueError as e:  # object arrays need pickle, which we refuse; a damaged header
        raise AnalogError(f"{name}: cannot read it without pickle: {str(e).splitlines()[0]}") from None
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise AnalogError(f"{name}: not a readable .npy or .npz file: {e}") from None
    ids = arrays["input_ids"]
    vocabulary = arrays.get("vocab_size")
    if vocabulary is not None and (vocabulary.ndim != 0 or vocabulary.dtype.kind not in "iu"
                                   or not 2 <= vocabulary <= MAX_CLASSES):
        raise AnalogError(f"{name}: vocab_size must be one integer from 2 to {MAX_CLASSES}")
    labels = arrays.get("labels")
    if labels is None:
        labels = next_tokens(ids) if ids.ndim == 2 and ids.dtype.kind in "iu" else ids
    return checked_token_dataset(ids, labels, name, None if vocabulary is None else int(vocabulary),
                                 arrays.get("attention_mask"))
