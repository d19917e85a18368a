"""A device described by plain numbers, for technologies without a fitted model."""

from __future__ import annotations

from dataclasses import dataclass

from analog_onnx.devices.arrays import Array
from analog_onnx.devices.base import DeviceModel, power_law


@dataclass(frozen=True)
class GenericDevice(DeviceModel):
    """Additive and relative programming noise, a power-law drift with a Gaussian exponent, and
    relative read noise."""

    name = "generic"
    prog_noise_add: float = 0.0  # programming sigma, fraction of g_max
    prog_noise_rel: float = 0.0  # programming sigma, fraction of the target conductance
    drift_nu: float = 0.0  # mean drift exponent
    drift_nu_std: float = 0.0  # standard deviation of the exponent between devices (clipped at 0)
    read_noise_rel: float = 0.0  # read sigma, fraction of the current conductance
    t0: float = 20.0  # s: drift reference time, as PCM's

    def programming_sigma(self, g_target: Array) -> Array:
        return self.prog_noise_add * self.g_max + self.prog_noise_rel * g_target

    def drift(self, g_target: Array, g_prog: Array, z: Array, t_inference: Array | float) -> Array:
        nu = (self.drift_nu + self.drift_nu_std * z).clip(min=0.0) * self.drift_scale
        return g_prog * power_law(t_inference, self.t0, nu)

    def read_noise_sigma(self, g_prog: Array, g_now: Array, t_inference: Array | float) -> Array:
        return self.read_noise_rel * abs(g_now)
