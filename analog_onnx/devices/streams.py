"""Which random numbers the device steps use: counter-based streams of ``ops/rng.py``.

Every draw of one layer is a stream of the project's generator keyed by a control value and a
stream number derived from the layer's ``stream`` and the step, so a native kernel or a function
body can reproduce it element by element:

- per chip (programming, drift exponent, stuck devices, the compensation's reference read):
  ``stream_key(chip_seed, stream)``;
- per read (read noise): ``stream_key(seed, stream)``.

Device streams start at ``DEVICE_STREAM_BASE``, far above the op streams of a graph (small
integers), so the same integer used as ``seed`` and ``chip_seed`` never gives two effects the same
numbers. A draw covers the pair array ``[g+, g-]`` in C order: element i of g+ is draw i, element
i of g- is draw ``size + i``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from analog_onnx.devices.arrays import Array
from analog_onnx.ops.rng import INV_2_24, normals, squares32, stream_key

DEVICE_STREAM_BASE = 1 << 32


class Draw(IntEnum):
    """The device draws of one layer."""

    PROGRAM = 0  # N(0, 1) per device: programming error
    DRIFT = 1  # N(0, 1) per device: drift exponent (pcm, generic) or relaxation (reram)
    STUCK = 2  # U(0, 1) per device: stuck at 0 below stuck_at_zero, at g_max below that plus stuck_at_gmax
    READ = 3  # N(0, 1) per device and read: read noise
    REFERENCE_READ = 4  # N(0, 1) per device: read noise of the drift-compensation read at t_inference


def draw_stream(layer_stream: int, draw: Draw) -> int:
    """The generator stream of one draw of the layer with op stream ``layer_stream``."""
    return DEVICE_STREAM_BASE + layer_stream * len(Draw) + int(draw)


def uniforms(key: np.uint64, count: int) -> np.ndarray:
    """``count`` float32 U(0, 1) numbers: the top 24 bits of each counter's first draw, centred."""
    bits = squares32(np.arange(count, dtype=np.uint64), key)
    return ((bits >> np.uint64(8)).astype(np.float32) + np.float32(0.5)) * INV_2_24


@dataclass(frozen=True)
class ChipDraws:
    """One chip's standard draws for one layer, each shaped like the pair array ``(2, *W.shape)``."""

    program: Array  # N(0, 1)
    drift: Array  # N(0, 1)
    stuck: Array  # U(0, 1)
    reference_read: Array  # N(0, 1)


def chip_draws(chip_seed: int, layer_stream: int, shape: tuple[int, ...]) -> ChipDraws:
    """The per-chip draws of a layer with weights of ``shape``: a function of (chip_seed, stream) only."""
    pair_shape = (2, *shape)
    count = int(np.prod(pair_shape))

    def key(draw: Draw) -> np.uint64:
        return stream_key(chip_seed, draw_stream(layer_stream, draw))

    return ChipDraws(program=normals(key(Draw.PROGRAM), count).reshape(pair_shape),
                     drift=normals(key(Draw.DRIFT), count).reshape(pair_shape),
                     stuck=uniforms(key(Draw.STUCK), count).reshape(pair_shape),
                     reference_read=normals(key(Draw.REFERENCE_READ), count).reshape(pair_shape))


def read_normals(seed: int, layer_stream: int, shape: tuple[int, ...]) -> np.ndarray:
    """The read-noise normals of one read of a layer: a function of (seed, stream) only."""
    pair_shape = (2, *shape)
    key = stream_key(seed, draw_stream(layer_stream, Draw.READ))
    return normals(key, int(np.prod(pair_shape))).reshape(pair_shape)
