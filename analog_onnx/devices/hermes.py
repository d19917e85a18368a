"""Phase-change memory of IBM's HERMES chip, as aihwkit's ``HermesNoiseModel``
(``aihwkit/inference/noise/hermes.py``): fits, made by IBM, to the PCM devices of the 64-core
HERMES in-memory compute chip (Le Gallo et al., "A 64-core mixed-signal in-memory compute chip
based on phase-change memory for deep neural network inference", Nature Electronics 2023,
doi:10.1038/s41928-023-01010-1; the core: Khaddam-Aljameh et al., IEEE JSSC 2022, IEEE Xplore
document 9696185), with the statistical method of Nandakumar et al., ICECS 2019.

The numbers are aihwkit's for two devices per weight (its default ``num_devices=2``), programmed
with the multi-device method of Vasilopoulos et al., IEEE TED 2023 (IEEE Xplore document 10281389);
as in aihwkit, both devices drift as if they held the same conductance. The fits were made up to
g_max = 20.7 uS: set ``device.g_max = 20.7`` (the programming sigma scales with g_max, as aihwkit's).
"""

from __future__ import annotations

from dataclasses import dataclass

from analog_onnx.devices.arrays import Array, log, sqrt, where
from analog_onnx.devices.base import DeviceModel, polynomial, power_law


@dataclass(frozen=True)
class Branches:
    """A quantity of x = g/g_max fitted in two branches: below ``threshold`` a line in ln x clipped
    to [low, high], from it on a polynomial in x."""

    threshold: float
    line: tuple[float, float, float, float]  # slope, offset, low, high: clip(slope ln x + offset, low, high)
    polynomial: tuple[float, ...]  # coefficients of x^0, x^1, ...

    def __call__(self, x: Array, floor: float) -> Array:
        """The quantity at ``x`` (the line's ln x taken at ``floor`` or above: same value, no -inf)."""
        slope, offset, low, high = self.line
        below = (slope * log(x.clip(min=floor)) + offset).clip(min=low, max=high)
        return where(x < self.threshold, below, polynomial(self.polynomial, x))


@dataclass(frozen=True)
class HermesPCMDevice(DeviceModel):
    """HERMES PCM: cubic programming noise, branch-fitted drift exponents and 1/f read noise."""

    name = "pcm-hermes"
    prog_coeff: tuple[float, ...] = (0.16603222, 4.71806468, -8.48101252, 4.68961419)  # uS, of (g/g_max)^i
    prog_coeff_g_max: float = 20.7  # uS: the g_max the programming fit was made at
    t0: float = 300.0  # s: first read after programming (two devices per weight); drift is relative to it
    t_read: float = 512e-9  # s: duration of one read, the 1/f noise's lower time cut-off
    nu_mean: Branches = Branches(0.0945, (-0.0387, -0.0182, 0.0720, 0.13), (0.0736, -0.0126, -0.0436))
    nu_std: Branches = Branches(0.3055, (-0.0117, -0.0057, 0.0091, 0.04), (0.0073, 0.0093, -0.0118))
    read_q: Branches = Branches(0.16, (-0.0117, -0.0069, 0.015, 0.04), (0.0123, 0.0211, -0.0280, 0.0069))
    g_relative_floor: float = 1e-7  # g/g_max below this counts as this in ln(g/g_max)

    def programming_sigma(self, g_target: Array) -> Array:
        return polynomial(self.prog_coeff, g_target / self.g_max) * (self.g_max / self.prog_coeff_g_max)

    def drift(self, g_target: Array, g_prog: Array, z: Array, t_inference: Array | float) -> Array:
        """nu = |mu(g) + sigma_nu(g) z| * drift_scale, g the target's g/g_max; the power law from t0."""
        x = (abs(g_target) / self.g_max).clip(min=self.g_relative_floor)
        nu = abs(self.nu_mean(x, self.g_relative_floor) + self.nu_std(x, self.g_relative_floor) * z)
        return g_prog * power_law(t_inference, self.t0, nu * self.drift_scale)

    def read_noise_sigma(self, g_prog: Array, g_now: Array, t_inference: Array | float) -> Array:
        """|g(t)| Q_s(g_prog) sqrt(ln((t + t_read) / (2 t_read))), t = t_inference + t0."""
        q_s = self.read_q(abs(g_prog) / self.g_max, self.g_relative_floor)
        t = t_inference + self.t0
        return abs(g_now) * q_s * sqrt(log((t + self.t_read) / (2 * self.t_read)))
