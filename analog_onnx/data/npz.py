"""``npz:FILE``: a numpy archive with arrays ``x`` and ``y`` (or ``x_train``/``y_train`` and
``x_test``/``y_test`` when one file holds both splits). Read without pickle: object arrays are refused."""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np

from analog_onnx.data.dataset import Dataset, check_declared_size, checked_dataset, existing_path
from analog_onnx.errors import AnalogError

HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def check_declared_sizes(file: Path, keys: list[str], source: str) -> None:
    """Read each member's .npy header (not its data) and refuse sizes over the data limit."""
    with zipfile.ZipFile(file) as archive:
        for key in keys:
            with archive.open(f"{key}.npy") as member:
                version = np.lib.format.read_magic(member)
                if version not in HEADER_READERS:
                    raise AnalogError(f"{source}: array {key} has .npy format {version}, which is not supported")
                shape, _, dtype = HEADER_READERS[version](member)
            check_declared_size(math.prod(shape) * dtype.itemsize, f"{source}: array {key}")


def read_npz(path: str | None, split: str) -> Dataset:
    file = existing_path(path, "npz", directory=False)
    if not zipfile.is_zipfile(file):
        raise AnalogError(f"npz: {path} is not a readable .npz archive (not a zip file)")
    try:
        with np.load(file, allow_pickle=False) as archive:
            keys = set(archive.files)
            x_key, y_key = (f"x_{split}", f"y_{split}") if f"x_{split}" in keys else ("x", "y")
            if x_key not in keys or y_key not in keys:
                raise AnalogError(f"npz: {path} needs arrays x and y (or x_{split} and y_{split}); "
                                  f"it has {', '.join(sorted(keys)) or 'none'}")
            check_declared_sizes(file, [x_key, y_key], f"npz: {file.name}")
            x, y = archive[x_key], archive[y_key]
    except ValueError as e:  # object arrays need pickle, which we refuse
        raise AnalogError(f"npz: cannot read {path} without pickle: {e}") from None
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise AnalogError(f"npz: {path} is not a readable .npz archive: {e}") from None
    if x.dtype == np.uint8:  # 8-bit images: scale to [0, 1] like the image readers do
        x = x.astype(np.float32) / np.float32(255.0)
    return checked_dataset(x, y, f"npz:{file.name}")
