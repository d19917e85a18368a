"""A layer on one chip: map, program, stick, drift, compensate, read (numpy reference and torch twin).

The functions take numpy arrays or torch tensors alike (the draws decide; see ``streams.py`` for
the reference's and ``torch_twins.py`` for the trainer's), so there is one definition:

1. map the weights to target pairs ``[g+, g-]`` (``conductance.py``; ``bits`` rounds to levels);
2. program (per chip): ``device.program``;
3. stuck devices (per chip): a device whose uniform draw ``u < stuck_at_zero`` reads 0 uS, one with
   ``u < stuck_at_zero + stuck_at_gmax`` reads ``g_max``, at every time;
4. drift to ``t_inference`` (per chip and time): ``device.drift``;
5. global drift compensation (per chip and time): ``alpha = mean|W_prog| / mean|W_read(t)|``,
   the ratio of a reference read of the whole array (one-hot inputs) right after programming to
   the same read at ``t_inference``, as aihwkit's ``GlobalDriftCompensation``: as in aihwkit, the
   first read sees the programmed conductances and the second also their read noise (its own
   per-chip draw); alpha scales the layer's output;
6. read (per read): ``device.read`` adds fresh read noise.

Weight-side work (1-5) runs once per (chip_seed, t_inference); only step 6 is per read.
"""

from __future__ import annotations

from dataclasses import dataclass

from analog_onnx.devices.arrays import Array, mean_abs, where
from analog_onnx.devices.base import DeviceModel
from analog_onnx.devices.conductance import mapping_scale, to_conductances, to_weights
from analog_onnx.devices.config import DeviceConfig
from analog_onnx.devices.streams import ChipDraws

MIN_READOUT = 1e-4  # a reference readout (mean |weight|) below this counts as this, as aihwkit's


@dataclass(frozen=True)
class ProgrammedLayer:
    """A layer's conductances on one chip at ``t_inference`` (uS, shape ``(2, *W.shape)``)."""

    g_prog: Array  # right after programming, stuck devices included
    g_now: Array  # at t_inference
    scale: Array  # uS per weight unit (per tensor or per output channel)
    alpha: Array | float  # drift-compensation factor for the layer's output (1.0 when off)
    t_inference: float  # s


def program_layer(
    weights: Array,
    device: DeviceModel,
    config: DeviceConfig,
    draws: ChipDraws,
    t_inference: float,
    *,
    bits: int = 0,
    channel_axis: int | None = None,
) -> ProgrammedLayer:
    """Steps 1-5 for one chip. ``channel_axis`` is the output-channel axis of ``weights`` for a
    per-channel mapping (None: one scale per tensor); ``bits`` the weight levels (0: analog)."""
    g_max = device.g_max
    scale = mapping_scale(weights, g_max, channel_axis)
    g_target = to_conductances(weights, scale, g_max, bits)
    g_prog = stick(device.program(g_target, draws.program), draws.stuck, config, g_max)
    g_now = g_prog
    if config.drift:
        g_now = stick(device.drift(g_target, g_prog, draws.drift, t_inference), draws.stuck, config, g_max)
    alpha = 1.0
    if config.drift_compensation:
        g_read = device.read(g_prog, g_now, draws.reference_read, t_inference) if config.read_noise else g_now
        alpha = compensation(g_prog, g_read, scale)
    return ProgrammedLayer(g_prog=g_prog, g_now=g_now, scale=scale, alpha=alpha, t_inference=t_inference)


def stick(g: Array, u: Array, config: DeviceConfig, g_max: float) -> Array:
    """Step 3: stuck devices hold 0 uS or ``g_max`` whatever was programmed."""
    if config.stuck_at_zero == 0 and config.stuck_at_gmax == 0:
        return g
    g = where(u < config.stuck_at_zero + config.stuck_at_gmax, g * 0.0 + g_max, g)
    return where(u < config.stuck_at_zero, g * 0.0, g)


def compensation(g_reference: Array, g_current: Array, scale: Array) -> Array:
    """Step 5: ``mean|W_reference| / mean|W_current|``, each readout at least ``MIN_READOUT``."""
    reference = mean_abs(to_weights(g_reference, scale)).clip(min=MIN_READOUT)
    return reference / mean_abs(to_weights(g_current, scale)).clip(min=MIN_READOUT)


def read_weights(layer: ProgrammedLayer, device: DeviceModel, config: DeviceConfig, z: Array, *,
                 compensated: bool = True) -> Array:
    """Step 6: the weights one read sees, compensation included (``alpha * W_read``) unless
    ``compensated`` is False (a graph applies alpha to the layer's output, after the ADC)."""
    g = device.read(layer.g_prog, layer.g_now, z, layer.t_inference) if config.read_noise else layer.g_now
    weights = to_weights(g, layer.scale)
    return layer.alpha * weights if compensated else weights
