"""Numpy reference of the analog op set: the readable definition every other implementation
(function bodies, native kernels, torch twins) is tested against.

Conventions shared by all ops:

- Arithmetic is float32, in the order written here, so deterministic parts agree exactly.
- "Rows" of a tensor are the rows of ``Flatten(X, axis)``: ``axis=1`` gives one row per sample,
  ``axis=-1`` one row per vector (aihwkit's granularity for dense layers), ``axis=0`` one row.
- Abs-max scales of a row without a value of at least the smallest normal float32 (all zero,
  subnormal or empty) are 1, so no division by zero and no overflow of ``1 / scale``: a CPU
  that flushes subnormals to zero computes the same.
"""

from __future__ import annotations

import numpy as np

from analog_onnx.devices import DeviceConfig, chip_weights
from analog_onnx.ops.grid import levels
from analog_onnx.ops.rng import noise_normals, normals, stream_key

F32 = np.float32
TINY = np.finfo(F32).tiny  # the smallest normal float32 (2**-126): 1 / TINY is finite


def rows(x: np.ndarray, axis: int) -> np.ndarray:
    """``Flatten(x, axis)`` as ONNX defines it."""
    axis = axis + x.ndim if axis < 0 else axis
    lead, rest = (int(np.prod(part, dtype=np.int64)) for part in (x.shape[:axis], x.shape[axis:]))
    return x.reshape(lead, rest)  # not -1: either may be 0


def row_absmax(x: np.ndarray, axis: int) -> np.ndarray:
    """Abs-max of each row of ``Flatten(x, axis)``, shape [rows, 1]; see :func:`scale_of`."""
    return scale_of(np.abs(rows(x, axis)).max(axis=1, keepdims=True, initial=0).astype(F32))


def scale_of(absmax: np.ndarray) -> np.ndarray:
    """The scale of rows with this abs-max: 1 below ``TINY`` (zero, subnormal, empty; also NaN)."""
    return np.where(absmax >= TINY, absmax, F32(1.0))


def clip_and_round(x: np.ndarray, bits: int, bound: float, signed: int) -> np.ndarray:
    """Clip to [-bound, bound] ([0, bound] unsigned), then round half-to-even to the grid
    ``bound / levels`` when ``bits > 0``. ``bound = inf`` disables clipping."""
    x = x.astype(F32)
    bound_f = F32(bound)
    low = -bound_f if signed else F32(0.0)
    clipped = np.clip(x, low, bound_f)
    n = levels(bits, signed)
    if n == 0:
        return clipped
    step = bound_f / F32(n)
    return (np.rint(clipped / step) * step).astype(F32)


def noise(
    x: np.ndarray,
    noise_scale: float,
    seed: int,
    *,
    sigma_add: float = 0.0,
    sigma_mul: float = 0.0,
    relative: int = 0,
    stream: int = 0,
) -> np.ndarray:
    """Y = X * (1 + s*sigma_mul*z1) + (s*sigma_add*R) * z2, z1, z2 ~ N(0, 1) per element."""
    x = x.astype(F32)
    z1, z2 = noise_normals(stream_key(seed, stream), x.size, sigma_add != 0 and sigma_mul != 0)
    s = F32(noise_scale)
    mul = s * F32(sigma_mul)
    add = (s * F32(sigma_add)) * (row_absmax(x, 1) if relative else F32(1.0))
    flat = rows(x, 1)
    y = flat * (F32(1.0) + mul * z1.reshape(flat.shape)) + add * z2.reshape(flat.shape)
    return y.reshape(x.shape).astype(F32)


def quantize(
    x: np.ndarray,
    *,
    bits: int,
    bound: float = 1.0,
    signed: int = 1,
    dynamic: int = 0,
    axis: int = 0,
) -> np.ndarray:
    """Fake quantization; with ``dynamic=1`` each row is divided by its abs-max first and
    multiplied back after (aihwkit's abs-max noise management)."""
    x = x.astype(F32)
    if not dynamic:
        return clip_and_round(x, bits, bound, signed)
    scale = row_absmax(x, axis)
    q = clip_and_round(rows(x, axis) / scale, bits, bound, signed) * scale
    return q.reshape(x.shape).astype(F32)


def mvm_input(
    x: np.ndarray,
    *,
    inp_bits: int = 0,
    inp_bound: float = 1.0,
    noise_management: int = 1,
    axis: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """DAC side of an analog MVM: returns (normalized quantized input, scale S of shape [rows, 1])."""
    x = x.astype(F32)
    flat = rows(x, axis)
    scale = row_absmax(x, axis) if noise_management else np.ones((flat.shape[0], 1), F32)
    xn = clip_and_round(flat / scale, inp_bits, inp_bound, 1)
    return xn.reshape(x.shape), scale


def mvm_output(
    y: np.ndarray,
    scale: np.ndarray,
    noise_scale: float,
    seed: int,
    *,
    weight_scale: float = 1.0,
    out_noise: float = 0.0,
    out_bits: int = 0,
    out_bound: float = float("inf"),
    axis: int = 1,
    stream: int = 0,
) -> np.ndarray:
    """ADC side: Z = ADC(Y/w + s*out_noise*z) * w * S, with w the weight scale and S the input scale."""
    y = y.astype(F32)
    w = F32(weight_scale)
    z = normals(stream_key(seed, stream), y.size)
    yn = y / w + (F32(noise_scale) * F32(out_noise)) * z.reshape(y.shape)
    adc = clip_and_round(yn, out_bits, out_bound, 1) * w
    return (rows(adc, axis) * scale.astype(F32)).reshape(y.shape).astype(F32)


def device_weights(
    w: np.ndarray,
    noise_scale: float,
    seed: int,
    chip_seed: int,
    t_inference: float,
    *,
    device: str = "pcm",
    per_channel: int = 0,
    bits: int = 0,
    stream: int = 0,
    **settings: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The weights one read of chip ``chip_seed`` sees ``t_inference`` s after programming, and the
    layer's drift-compensation factor: ``(W_read, alpha)``, ``alpha`` to multiply the layer's output.

    ``device`` names the device model (``devices/registry.py``); the other attributes are the
    ``[device]`` config keys (booleans as 0/1). ``per_channel=1`` maps each row of ``Flatten(W, 1)``
    (output channels on axis 0) to its own conductance scale. The physics is ``analog_onnx.devices``.
    """
    config = device_config(device, settings)
    return chip_weights(w.astype(F32), config, float(noise_scale), int(seed), int(chip_seed), float(t_inference),
                        bits=bits, channel_axis=0 if per_channel else None, stream=stream)


def device_config(device: str, settings: dict[str, float]) -> DeviceConfig:
    """The ``[device]`` section a DeviceWeights node's attributes describe."""
    switches = ("drift", "read_noise", "drift_compensation")
    return DeviceConfig(model=device, **{k: bool(v) if k in switches else float(v) for k, v in settings.items()})


def split_sizes(size: int, max_size: int) -> list[int]:
    """aihwkit's split of ``size`` over tiles of at most ``max_size`` (0: one tile): as equal as can
    be, the first ones one larger."""
    if max_size <= 0 or size <= max_size:
        return [size]
    count = -(-size // max_size)
    base, extra = divmod(size, count)
    return [base + (i < extra) for i in range(count)]


def _bounds(sizes: list[int]) -> list[tuple[int, int]]:
    ends = np.cumsum(sizes).tolist()
    return list(zip([0, *ends[:-1]], ends, strict=True))


def converter(x: np.ndarray, bits: int, bound: float) -> tuple[np.ndarray, np.ndarray]:
    """A DAC/ADC: (x rounded half-to-even to the grid ``bound / L`` and clipped to ``[-bound, bound]``,
    whether the rounded value lay beyond the bound). ``bits = 0``: no grid."""
    n = levels(bits, 1)
    bound_f = F32(bound)
    if n == 0:
        return np.clip(x, -bound_f, bound_f), np.abs(x) > bound_f
    step = bound_f / F32(n)
    k = np.rint(x / step)
    return (np.clip(k, -F32(n), F32(n)) * step).astype(F32), np.abs(k) > F32(n)


def mapping_scales(w: np.ndarray, omega: float, columnwise: int) -> np.ndarray:
    """aihwkit's weight mapping of one tile ``w`` [outputs, inputs]: per output the factor the
    tile's weights are divided by (and its outputs multiplied by), max|W|/omega (1 if 0 or omega = 0)."""
    if omega <= 0:
        return np.ones(w.shape[0], F32)
    peak = np.abs(w).max(axis=1, initial=0) if columnwise else np.full(w.shape[0], np.abs(w).max(initial=0), F32)
    alpha = (peak / F32(omega)).astype(F32)
    return np.where(alpha == 0, F32(1.0), alpha)


def tile_sigma(sigma: np.float32, sigma_w: np.float32, u: np.ndarray) -> np.ndarray:
    """The output noise std of each vector ``u`` [vectors, inputs] a tile reads, shape [vectors, 1]:
    ``sqrt(sigma^2 + sigma_w^2 sum(u^2))``, output noise ``sigma`` and weight noise ``sigma_w``."""
    squares = np.sum(u * u, axis=1, keepdims=True, dtype=F32)
    return np.sqrt(sigma * sigma + (sigma_w * sigma_w) * squares).astype(F32)


def analog_tile(
    x: np.ndarray,
    w: np.ndarray,
    noise_scale: float,
    seed: int,
    *,
    inp_bits: int = 0,
    inp_bound: float = 1.0,
    noise_management: int = 1,
    out_noise: float = 0.0,
    out_bits: int = 0,
    out_bound: float = float("inf"),
    bm_rounds: int = 1,
    max_input_size: int = 0,
    max_output_size: int = 0,
    weight_scaling_omega: float = 0.0,
    weight_scaling_columnwise: int = 0,
    w_noise: float = 0.0,
    stream: int = 0,
) -> np.ndarray:
    """An analog layer ``Y[..., M] = X[..., K] W^T`` on tiles as aihwkit computes it, per input vector.

    K is split over input tiles and M over output tiles (``split_sizes``). For each tile ``t``,
    vector ``n`` and round ``r = 0 .. bm_rounds-1``, with ``c`` the input abs-max of the vector's
    slice (1 without noise management, or below ``TINY``) and ``s = (1/c) / 2^r``:
    ``y = ADC(DAC(x s) (W_t/a)^T + sigma z) / s``, ``a`` the tile's mapping scales. The noise is
    the output noise and aihwkit's weight read noise (``w_noise``: independent normal noise on
    every mapped weight, drawn afresh per product), which for one vector ``u = DAC(x s)`` is
    output noise of std ``w_noise ||u||``: ``sigma = sqrt(o^2 + v^2 sum(u^2))`` with
    ``o = noise_scale out_noise`` and ``v = noise_scale w_noise`` (``sigma = o`` when ``v = 0``).
    The vector takes the first round in which no output of its tile saturates the ADC (or the last
    round); the tiles' ``y a`` are summed over the input tiles in order. ``z`` of round ``r``, input
    tile ``t``, vector ``n``, output ``m`` is normal ``((r T + t) N + n) M + m`` of the stream.
    """
    x, w = x.astype(F32), w.astype(F32)
    m_out, k_in = w.shape
    vectors = x.reshape(int(np.prod(x.shape[:-1])), k_in)  # not -1: K may be 0
    n_vec = vectors.shape[0]
    in_tiles, out_tiles = _bounds(split_sizes(k_in, max_input_size)), _bounds(split_sizes(m_out, max_output_size))
    sigma = F32(noise_scale) * F32(out_noise)
    sigma_w = F32(noise_scale) * F32(w_noise)
    z = normals(stream_key(seed, stream), bm_rounds * len(in_tiles) * n_vec * m_out) if sigma or sigma_w else None
    total = np.zeros((n_vec, m_out), F32)
    for t, (k0, k1) in enumerate(in_tiles):
        xs = vectors[:, k0:k1]
        absmax = np.abs(xs).max(axis=1, keepdims=True, initial=0) if noise_management else np.ones((n_vec, 1), F32)
        inverse = F32(1.0) / scale_of(absmax)
        for m0, m1 in out_tiles:
            tile = w[m0:m1, k0:k1]
            alpha = mapping_scales(tile, weight_scaling_omega, weight_scaling_columnwise)
            mapped = (tile / alpha[:, None]).astype(F32)
            result = np.zeros((n_vec, m1 - m0), F32)
            pending = np.ones(n_vec, bool)
            for r in range(bm_rounds):
                scale = inverse / F32(2.0**r)
                xq, _ = converter(xs * scale, inp_bits, inp_bound)
                y = (xq @ mapped.T).astype(F32)
                if z is not None:
                    offset = (r * len(in_tiles) + t) * n_vec * m_out
                    spread = tile_sigma(sigma, sigma_w, xq) if sigma_w else sigma
                    y = y + spread * z[offset:offset + n_vec * m_out].reshape(n_vec, m_out)[:, m0:m1]
                q, saturated = converter(y, out_bits, out_bound)
                done = pending & ~(saturated.any(axis=1) & (r < bm_rounds - 1))
                result[done] = (q * (F32(1.0) / scale))[done]
                pending &= ~done
            total[:, m0:m1] += result * alpha
    return total.reshape(*x.shape[:-1], m_out)
