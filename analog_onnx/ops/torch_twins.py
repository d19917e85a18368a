"""Torch twins of the analog op set, for training: what you train with is what you evaluate with.

Each function follows ``reference.py`` operation by operation in float32, so the deterministic
parts (clipping, rounding, scaling) agree bit for bit with the numpy reference on the CPU.
Differences, all deliberate:

- Noise comes from ``torch.randn`` (same distribution, not the same numbers as the counter-based
  stream of ``rng.py``); tests may pass the reference's normals in through ``normals``.
- Gradients: rounding uses the straight-through estimator, clipped: the gradient of
  clip-and-round is 1 inside the clip range and 0 outside it (so training sees the DAC/ADC
  saturate). Abs-max scales (noise management, dynamic quantization, relative noise) are treated
  as constants: the division by a scale and the multiplication back cancel exactly, so the
  straight-through gradient of the whole op is the mask above. The noise draws are constants too,
  so ``Noise`` passes ``1 + s*sigma_mul*z1`` back to its input.
- Export: ``clip_and_round`` has an ONNX form (see ``_ClipAndRound.symbolic``), so a model that
  keeps quantizers (QAT) exports them as standard QuantizeLinear/DequantizeLinear nodes.
- Inputs in half precision (mixed-precision training) are computed in float32 and returned so.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from analog_onnx.ops import DOMAIN
from analog_onnx.ops.grid import levels
from analog_onnx.ops.reference import TINY

F32 = np.float32
Normals = tuple[torch.Tensor, torch.Tensor]


def f32(value: float) -> float:
    """``value`` rounded to float32, as a Python float (torch uses it exactly on float32 tensors)."""
    return float(F32(value))


def as_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 (no-op, and no Cast node in an export, when it already is)."""
    return x if x.dtype == torch.float32 else x.float()


def rows(x: torch.Tensor, axis: int) -> torch.Tensor:
    """``Flatten(x, axis)`` as ONNX defines it."""
    axis = axis + x.dim() if axis < 0 else axis
    lead = 1
    for d in x.shape[:axis]:
        lead *= d
    return x.reshape(lead, -1)


def row_absmax(x: torch.Tensor, axis: int) -> torch.Tensor:
    """Abs-max of each row of ``Flatten(x, axis)``, shape [rows, 1], as a scale. No gradient."""
    return scale_of(rows(x.detach(), axis).abs().amax(dim=1, keepdim=True))


def scale_of(absmax: torch.Tensor) -> torch.Tensor:
    """Twin of ``reference.scale_of``: 1 where the abs-max is below the smallest normal float32."""
    return torch.where(absmax >= TINY, absmax, torch.ones_like(absmax))


class _ClipAndRound(torch.autograd.Function):
    """Clip, then round half-to-even to the grid ``bound / levels``; clipped straight-through gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bits: int, bound: float, signed: int) -> torch.Tensor:  # type: ignore[override]
        low = -bound if signed else 0.0
        ctx.save_for_backward((x >= low) & (x <= bound))
        clipped = torch.clamp(x, low, bound)
        n = levels(bits, signed)
        if n == 0:
            return clipped
        step = f32(F32(bound) / F32(n))
        return torch.round(clipped / step) * step

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None

    @staticmethod
    def symbolic(g: Any, x: Any, bits: int, bound: float, signed: int) -> Any:
        """ONNX form: standard QuantizeLinear/DequantizeLinear when the grid fits in 8 bits (a Clip
        first unless the integer type saturates exactly at the bounds), else ``ai.analog.Quantize``."""
        if bits > 8:
            y = g.op(f"{DOMAIN}::Quantize", x, bits_i=bits, bound_f=bound, signed_i=signed, dynamic_i=0, axis_i=0)
            y.setType(x.type())
            return y
        if signed or bits != 8:
            low = -bound if signed else 0.0
            x = g.op("Clip", x, _constant(g, low), _constant(g, bound))
        n = levels(bits, signed)
        if n == 0:
            return x
        scale = _constant(g, F32(bound) / F32(n))
        zero = g.op("Constant", value_t=torch.tensor(0, dtype=torch.int8 if signed else torch.uint8))
        return g.op("DequantizeLinear", g.op("QuantizeLinear", x, scale, zero), scale, zero)


def _constant(g: Any, value: float) -> Any:
    return g.op("Constant", value_t=torch.tensor(value, dtype=torch.float32))


def clip_and_round(x: torch.Tensor, bits: int, bound: float, signed: int) -> torch.Tensor:
    """Twin of ``reference.clip_and_round`` (``bound = inf`` disables clipping)."""
    return _ClipAndRound.apply(as_float32(x), int(bits), f32(bound), int(signed))


def _normals(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(like.shape, dtype=torch.float32, device=like.device, generator=generator)


def noise(
    x: torch.Tensor,
    noise_scale: float,
    *,
    sigma_add: float = 0.0,
    sigma_mul: float = 0.0,
    relative: int = 0,
    normals: Normals | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Y = X * (1 + s*sigma_mul*z1) + (s*sigma_add*R) * z2 (twin of ``reference.noise``)."""
    x = as_float32(x)
    s = F32(noise_scale)
    mul = f32(s * F32(sigma_mul))
    add = f32(s * F32(sigma_add))
    if mul == 0 and add == 0:
        return x
    flat = rows(x, 1)
    z1, z2 = normals if normals is not None else (None, None)
    y = flat
    if mul != 0:
        z1 = rows(z1, 1) if z1 is not None else _normals(flat, generator)
        y = flat * (1.0 + mul * z1)
    if add != 0:
        z2 = rows(z2, 1) if z2 is not None else _normals(flat, generator)
        scale = add * row_absmax(x, 1) if relative else add
        y = y + scale * z2
    return y.reshape(x.shape)


def quantize(
    x: torch.Tensor,
    *,
    bits: int,
    bound: float = 1.0,
    signed: int = 1,
    dynamic: int = 0,
    axis: int = 0,
) -> torch.Tensor:
    """Fake quantization (twin of ``reference.quantize``); ``dynamic=1`` scales rows by their abs-max."""
    x = as_float32(x)
    if not dynamic:
        return clip_and_round(x, bits, bound, signed)
    scale = row_absmax(x, axis)
    return (clip_and_round(rows(x, axis) / scale, bits, bound, signed) * scale).reshape(x.shape)


def mvm_input(
    x: torch.Tensor,
    *,
    inp_bits: int = 0,
    inp_bound: float = 1.0,
    noise_management: int = 1,
    axis: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DAC side of an analog MVM: (normalized quantized input, scale S [rows, 1], no gradient)."""
    x = as_float32(x)
    flat = rows(x, axis)
    if noise_management:
        scale = row_absmax(x, axis)
    else:
        scale = torch.ones((flat.shape[0], 1), dtype=torch.float32, device=x.device)
    return clip_and_round(flat / scale, inp_bits, inp_bound, 1).reshape(x.shape), scale


def mvm_output(
    y: torch.Tensor,
    scale: torch.Tensor,
    noise_scale: float,
    *,
    weight_scale: float | torch.Tensor = 1.0,
    out_noise: float = 0.0,
    out_bits: int = 0,
    out_bound: float = float("inf"),
    axis: int = 1,
    normals: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """ADC side: Z = ADC(Y/w + s*out_noise*z) * w * S (twin of ``reference.mvm_output``).

    ``weight_scale`` may be a 0-dim tensor (a layer's current max|W| during training); it is
    treated as a constant.
    """
    y = as_float32(y)
    w = weight_scale.detach().float() if isinstance(weight_scale, torch.Tensor) else f32(weight_scale)
    yn = y / w
    sigma = f32(F32(noise_scale) * F32(out_noise))
    if sigma != 0:
        z = normals.reshape(y.shape) if normals is not None else _normals(y, generator)
        yn = yn + sigma * z
    adc = clip_and_round(yn, out_bits, out_bound, 1) * w
    return (rows(adc, axis) * scale).reshape(y.shape)


def device_weights(w: torch.Tensor, noise_scale: float, t_inference: float, *, draws: Any = None,
                   read: torch.Tensor | None = None, device: str = "pcm", per_channel: int = 0, bits: int = 0,
                   **settings: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W_read, alpha)`` of one fresh chip and read (``draws``, a ``ChipDraws``, and ``read``, the
    read normals, replace the torch draws): the reference's device physics on tensors, no gradient."""
    from analog_onnx.devices import make_device
    from analog_onnx.devices.chip import program_layer, read_weights
    from analog_onnx.devices.torch_twins import torch_chip_draws
    from analog_onnx.ops.reference import device_config

    config = device_config(device, settings)
    physics = make_device(config, noise_scale)
    with torch.no_grad():
        w = as_float32(w.detach())
        draws = draws if draws is not None else torch_chip_draws(tuple(w.shape), device=w.device)
        layer = program_layer(w, physics, config, draws, float(t_inference), bits=bits,
                              channel_axis=0 if per_channel else None)
        z = read if read is not None else torch.randn((2, *w.shape), device=w.device)
        w_read = read_weights(layer, physics, config, z, compensated=False)
    return w_read, torch.as_tensor(layer.alpha, dtype=torch.float32)


class _Converter(torch.autograd.Function):
    """Twin of ``reference.converter``; gradient 1 inside the bound, 0 beyond (straight-through)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bits: int, bound: float) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        ctx.save_for_backward(x.abs() <= bound)
        n = levels(bits, 1)
        if n == 0:
            return torch.clamp(x, -bound, bound), x.abs() > bound
        step = f32(F32(bound) / F32(n))
        k = torch.round(x / step)
        return torch.clamp(k, -float(n), float(n)) * step, k.abs() > n

    @staticmethod
    def backward(ctx, grad: torch.Tensor, _: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None


def _mapping_scales(w: torch.Tensor, omega: float, columnwise: int) -> torch.Tensor:
    """Twin of ``reference.mapping_scales`` (a constant: no gradient)."""
    w = w.detach()
    if omega <= 0:
        return torch.ones(w.shape[0], dtype=torch.float32, device=w.device)
    peak = w.abs().amax(dim=1) if columnwise else w.abs().amax().expand(w.shape[0])
    alpha = peak / f32(omega)
    return torch.where(alpha == 0, torch.ones_like(alpha), alpha)


def _tile_sigma(sigma: float, sigma_w: float, u: torch.Tensor) -> torch.Tensor:
    """Twin of ``reference.tile_sigma``: the output noise std of each vector ``u``, shape [vectors, 1]."""
    variance, weight_variance = f32(F32(sigma) * F32(sigma)), f32(F32(sigma_w) * F32(sigma_w))
    return torch.sqrt(variance + weight_variance * (u * u).sum(dim=1, keepdim=True))


def analog_tile(
    x: torch.Tensor,
    w: torch.Tensor,
    noise_scale: float,
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
    normals: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Twin of ``reference.analog_tile``: the layer on tiles, per input vector. ``normals`` (flat, at
    least as many as the reference draws) replaces ``torch.randn``; a round is computed only while
    some vector still saturates. Gradients flow straight through the converters; input and
    mapping scales, the noise's std and the choice of round are constants."""
    from analog_onnx.ops.reference import split_sizes

    x, w = as_float32(x), as_float32(w)
    m_out, k_in = w.shape
    vectors = x.reshape(-1, k_in)
    n_vec = vectors.shape[0]
    in_sizes, out_sizes = split_sizes(k_in, max_input_size), split_sizes(m_out, max_output_size)
    sigma = f32(F32(noise_scale) * F32(out_noise))
    sigma_w = f32(F32(noise_scale) * F32(w_noise))
    partials = []
    k0 = 0
    for t, k_size in enumerate(in_sizes):
        xs = vectors[:, k0:k0 + k_size]
        absmax = xs.detach().abs().amax(dim=1, keepdim=True) if noise_management else torch.ones_like(xs[:, :1])
        inverse = 1.0 / scale_of(absmax)
        columns, m0 = [], 0
        for m_size in out_sizes:
            tile = w[m0:m0 + m_size, k0:k0 + k_size]
            alpha = _mapping_scales(tile, weight_scaling_omega, weight_scaling_columnwise)
            mapped = tile / alpha[:, None]
            result = torch.zeros((n_vec, m_size), dtype=torch.float32, device=x.device)
            pending = torch.ones((n_vec, 1), dtype=torch.bool, device=x.device)
            for r in range(bm_rounds):
                scale = inverse / f32(2.0**r)
                xq, _ = _Converter.apply(xs * scale, int(inp_bits), f32(inp_bound))
                y = xq @ mapped.T
                if sigma or sigma_w:
                    if normals is not None:
                        offset = (r * len(in_sizes) + t) * n_vec * m_out
                        z = normals[offset:offset + n_vec * m_out].reshape(n_vec, m_out)[:, m0:m0 + m_size]
                    else:
                        z = _normals(y, generator)
                    y = y + (_tile_sigma(sigma, sigma_w, xq.detach()) if sigma_w else sigma) * z
                q, beyond = _Converter.apply(y, int(out_bits), f32(out_bound))
                done = pending & ~(beyond.any(dim=1, keepdim=True) & (r < bm_rounds - 1))
                result = torch.where(done, q * (1.0 / scale), result)
                pending = pending & ~done
                if not pending.any():
                    break
            columns.append(result * alpha)
            m0 += m_size
        partials.append(torch.cat(columns, dim=1))
        k0 += k_size
    total = partials[0]
    for partial in partials[1:]:
        total = total + partial
    return total.reshape(*x.shape[:-1], m_out)
