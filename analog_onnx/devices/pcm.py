"""Phase-change memory, as aihwkit's ``PCMLikeNoiseModel`` (``aihwkit/inference/noise/pcm.py``),
fitted on measured PCM devices by Nandakumar et al., ICECS 2019 (IEEE Xplore document 8964852);
the same model and global drift compensation are used by Joshi et al., Nature Communications 11,
2473 (2020).
"""

from __future__ import annotations

from dataclasses import dataclass

from analog_onnx.devices.arrays import Array, log, sqrt
from analog_onnx.devices.base import DeviceModel, polynomial, power_law


@dataclass(frozen=True)
class PCMDevice(DeviceModel):
    """PCM: polynomial programming noise, conductance-dependent drift exponents, 1/f read noise."""

    name = "pcm"
    prog_coeff: tuple[float, ...] = (0.26348, 1.9650, -1.1731)  # uS: sigma = sum c_i (g_target/g_max)^i
    prog_coeff_g_max: float = 25.0  # uS: the g_max the coefficients were fitted at (sigma scales with g_max)
    t0: float = 20.0  # s: first read after programming; drift is relative to it
    t_read: float = 250e-9  # s: duration of one read, the 1/f noise's lower time cut-off
    nu_mean: tuple[float, float, float, float] = (-0.0155, 0.0244, 0.049, 0.1)  # a ln(g/g_max) + b, in [lo, hi]
    nu_std: tuple[float, float, float, float] = (-0.0125, -0.0059, 0.008, 0.045)  # same form, spread of nu
    g_relative_floor: float = 1e-7  # g/g_max below this counts as this (ln 0 is undefined)
    read_q: float = 0.0088  # 1/f noise amplitude Q_s at g = g_max (dimensionless)
    read_q_exponent: float = 0.65  # Q_s = read_q / (g_prog/g_max)^read_q_exponent ...
    read_q_range: tuple[float, float] = (1e-3, 0.2)  # ... with the denominator >= lo and Q_s <= hi

    def programming_sigma(self, g_target: Array) -> Array:
        sigma = polynomial(self.prog_coeff, g_target / self.g_max)
        return sigma * (self.g_max / self.prog_coeff_g_max)

    def drift_exponent(self, g_target: Array, z: Array) -> Array:
        """nu = |mu(g) + sigma_nu(g) z| * drift_scale; mu and sigma_nu are clipped linear in ln(g/g_max)."""
        ln_g = log((abs(g_target) / self.g_max).clip(min=self.g_relative_floor))
        mean = _clipped_line(self.nu_mean, ln_g)
        spread = _clipped_line(self.nu_std, ln_g)
        return abs(mean + spread * z) * self.drift_scale

    def drift(self, g_target: Array, g_prog: Array, z: Array, t_inference: Array | float) -> Array:
        return g_prog * power_law(t_inference, self.t0, self.drift_exponent(g_target, z))

    def read_noise_sigma(self, g_prog: Array, g_now: Array, t_inference: Array | float) -> Array:
        """|g(t)| Q_s(g_prog) sqrt(ln((t + t_read) / (2 t_read))), t = t_inference + t0: the 1/f
        noise accumulated since programming, so it grows with time."""
        low, high = self.read_q_range
        q_s = (self.read_q / ((abs(g_prog) / self.g_max) ** self.read_q_exponent).clip(min=low)).clip(max=high)
        t = t_inference + self.t0
        return abs(g_now) * q_s * sqrt(log((t + self.t_read) / (2 * self.t_read)))


def _clipped_line(line: tuple[float, float, float, float], x: Array) -> Array:
    slope, offset, low, high = line
    return (slope * x + offset).clip(min=low, max=high)
