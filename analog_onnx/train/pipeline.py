"""Training data on the device: a validation split carved out of the training data, normalization
from what is trained on, crop/flip augmentation, and deterministic sharded batches (every process
of a DDP run sees its own slice of one permutation)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional

from analog_onnx.data import Dataset
from analog_onnx.errors import AnalogError

AUGMENTATIONS = ("auto", "none", "crop", "crop+flip")
MIN_AUGMENT_SIZE = 16  # smaller images (8x8 digits) lose too much to a shifted crop


def validation_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, validation) of a seeded, stratified split of the training data: each class
    gives ``round(fraction * n)`` of its ``n`` samples (at least one where it has two or more, none
    for fraction 0), so selection never needs the test split. Both sorted: the data keeps its order."""
    rng = np.random.default_rng([seed, 0x7A11D])
    held = []
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        count = min(len(members) - 1, max(1, round(fraction * len(members)))) \
            if fraction > 0 and len(members) > 1 else 0
        held.append(rng.permutation(members)[:count])
    validation = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    return np.setdiff1d(np.arange(len(y)), validation), validation


@dataclass(frozen=True)
class Normalization:
    """Per-channel (axis 1) mean and std of the train split; evaluate applies the same."""

    mean: list[float]
    std: list[float]

    @classmethod
    def of(cls, x: np.ndarray) -> Normalization:
        axes = tuple(i for i in range(x.ndim) if i != 1)
        mean = x.mean(axis=axes, dtype=np.float64)
        std = x.std(axis=axes, dtype=np.float64)
        std = np.where(std > 1e-6, std, 1.0)  # constant channels (border pixels) stay as they are
        return cls([float(m) for m in mean], [float(s) for s in std])

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        shape = [1, -1] + [1] * (x.dim() - 2)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).reshape(shape)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).reshape(shape)
        return (x - mean) / std


def resolve_augmentation(kind: str, in_shape: tuple[int, ...]) -> str:
    """``auto``: crop+flip for colour images of at least 16 px, crop only for grey ones (digits and
    letters are not mirror symmetric), nothing for smaller images and non-image data."""
    if kind not in AUGMENTATIONS:
        raise AnalogError(f"unknown augmentation {kind!r}; use one of {', '.join(AUGMENTATIONS)}")
    is_image = len(in_shape) == 3 and min(in_shape[1:]) >= MIN_AUGMENT_SIZE
    if kind == "auto":
        if not is_image:
            return "none"
        return "crop+flip" if in_shape[0] == 3 else "crop"
    if kind != "none" and len(in_shape) != 3:
        raise AnalogError(f"augmentation {kind} needs image data (C, H, W), got samples of shape {in_shape}")
    return kind


def augment(x: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """Random shifted crop (zero padding of 1/8 of the size) and horizontal flip, per sample."""
    if kind == "none":
        return x
    n, _, h, w = x.shape
    pad = max(1, h // 8)
    padded = functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None, :])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device)[None, :])[:, None, None, :]
    if kind == "crop+flip":
        flip = torch.rand(n, generator=generator, device=x.device) < 0.5
        cols = torch.where(flip[:, None, None, None], cols.flip(-1), cols)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


@dataclass
class DeviceData:
    """A split as tensors on the training device."""

    x: torch.Tensor
    y: torch.Tensor

    @classmethod
    def of(cls, dataset: Dataset, device: torch.device) -> DeviceData:
        return cls(torch.from_numpy(dataset.x).to(device), torch.from_numpy(dataset.y).to(device))

    def __len__(self) -> int:
        return len(self.y)


def train_batches(n: int, batch_size: int, *, seed: int, epoch: int, rank: int, world: int
                  ) -> Iterator[torch.Tensor]:
    """Index batches of one epoch for one process: the same seeded permutation everywhere, each
    global batch split evenly across processes, the incomplete last batch dropped. The generator's
    seed is taken mod 2**63, so any seed fits it and an ordinary seed keeps its permutations."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed((seed * 100003 + epoch) % 2**63))
    local = batch_size // world
    for start in range(0, n - batch_size + 1, batch_size):
        yield order[start + rank * local: start + (rank + 1) * local]


def steps_per_epoch(n: int, batch_size: int) -> int:
    return n // batch_size


def shard(n: int, rank: int, world: int) -> slice:
    """The contiguous part of an evaluation split one process evaluates."""
    per = -(-n // world)
    return slice(min(n, rank * per), min(n, (rank + 1) * per))
