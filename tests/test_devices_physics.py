"""Device steps against their formulas (aihwkit's PCM and ReRAM fits, the generic device).

Statistical checks draw n devices from the project's generator and allow 5 standard errors:
sigma/sqrt(n) for a mean, sigma/sqrt(2(n-1)) for a standard deviation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from analog_onnx.devices import GenericDevice, PCMDevice, ReRAMDevice
from analog_onnx.ops.rng import normals, stream_key

N = 40_000
T0 = 20.0  # s, PCM drift reference time


def standard_normals(stream: int, n: int = N) -> np.ndarray:
    return normals(stream_key(7, stream), n)


def assert_mean(samples: np.ndarray, expected: float, sigma: float) -> None:
    assert abs(samples.mean() - expected) < 5 * sigma / math.sqrt(samples.size)


def assert_std(samples: np.ndarray, expected: float) -> None:
    assert abs(samples.std() - expected) < 5 * expected / math.sqrt(2 * (samples.size - 1))


def pcm_sigma_prog(g: float, g_max: float) -> float:
    """aihwkit PCMLikeNoiseModel: (0.26348 + 1.9650 x - 1.1731 x^2) * g_max / 25 uS, x = g / g_max."""
    x = g / g_max
    return (0.26348 + 1.9650 * x - 1.1731 * x * x) * g_max / 25.0


@pytest.mark.parametrize("g_max", [25.0, 50.0])
@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5, 0.75, 1.0])
def test_pcm_programming_spread_follows_the_polynomial(fraction: float, g_max: float) -> None:
    device = PCMDevice(g_max=g_max)
    g_target = np.full(N, fraction * g_max, dtype=np.float32)
    error = device.program(g_target, standard_normals(1)) - g_target
    sigma = pcm_sigma_prog(fraction * g_max, g_max)
    assert_mean(error, 0.0, sigma)
    assert_std(error, sigma)


def test_programming_never_goes_below_zero_and_prog_noise_scale_scales_sigma() -> None:
    g_target = np.zeros(N, dtype=np.float32)
    programmed = PCMDevice().program(g_target, standard_normals(2))
    assert programmed.min() == 0.0 and 0.4 < (programmed > 0).mean() < 0.6
    g_target = np.full(N, 10.0, dtype=np.float32)
    scaled = PCMDevice(prog_noise_scale=3.0).program(g_target, standard_normals(3)) - g_target
    assert_std(scaled, 3 * pcm_sigma_prog(10.0, 25.0))


def pcm_nu(fraction: float) -> tuple[float, float]:
    """aihwkit: mu = clip(-0.0155 ln x + 0.0244, 0.049, 0.1), sigma = clip(-0.0125 ln x - 0.0059, 0.008, 0.045)."""
    ln_x = math.log(fraction)
    return min(max(-0.0155 * ln_x + 0.0244, 0.049), 0.1), min(max(-0.0125 * ln_x - 0.0059, 0.008), 0.045)


def folded_expectation(f, mu: float, sigma: float) -> float:
    """E[f(|mu + sigma z|)], z ~ N(0, 1), by Gauss-Hermite quadrature."""
    z, w = np.polynomial.hermite_e.hermegauss(120)
    return float((w * f(np.abs(mu + sigma * z))).sum() / w.sum())


@pytest.mark.parametrize("fraction", [0.01, 0.05, 0.5, 1.0])
@pytest.mark.parametrize("t", [1.0, 3600.0, 86400.0, 3.15e7])
def test_pcm_drift_mean_follows_the_power_law(fraction: float, t: float) -> None:
    device = PCMDevice()
    g = np.full(N, fraction * 25.0, dtype=np.float32)
    ratio = device.drift(g, g, standard_normals(4), t) / g
    mu, sigma_nu = pcm_nu(fraction)

    def factor(nu: np.ndarray) -> np.ndarray:
        return ((t + T0) / T0) ** -nu

    expected = folded_expectation(factor, mu, sigma_nu)
    spread = math.sqrt(folded_expectation(lambda nu: factor(nu) ** 2, mu, sigma_nu) - expected**2)
    assert_mean(ratio, expected, spread)


def test_pcm_drift_exponent_mean_and_drift_scale() -> None:
    g = np.full(N, 0.05 * 25.0, dtype=np.float32)
    mu, sigma_nu = pcm_nu(0.05)
    z = standard_normals(5)
    nu = PCMDevice().drift_exponent(g, z)
    assert_mean(nu, folded_expectation(lambda v: v, mu, sigma_nu), sigma_nu)
    np.testing.assert_allclose(PCMDevice(drift_scale=2.0).drift_exponent(g, z), 2 * nu, rtol=1e-6)
    assert np.array_equal(PCMDevice().drift(g, g, z, 0.0), g)  # no drift right after programming


@pytest.mark.parametrize("fraction", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("t", [0.0, 3600.0, 3.15e7])
def test_pcm_read_noise_grows_with_time_as_1_over_f(fraction: float, t: float) -> None:
    device = PCMDevice()
    g = np.full(N, fraction * 25.0, dtype=np.float32)
    error = device.read(g, g, standard_normals(6), t) - g
    q_s = min(0.0088 / max(fraction**0.65, 1e-3), 0.2)
    t_total = t + T0
    sigma = fraction * 25.0 * q_s * math.sqrt(math.log((t_total + 250e-9) / (2 * 250e-9)))
    assert_std(error, sigma)
    assert_mean(error, 0.0, sigma)


def test_reram_spread_follows_the_fits_and_interpolates_in_log_time() -> None:
    device = ReRAMDevice(g_max=40.0)
    g = np.full(N, 20.0, dtype=np.float32)  # x = 0.5
    fit_1s = 0.348 + 16.030 / 2 - 43.853 / 4 + 45.393 / 8 - 16.815 / 16
    fit_1d = 0.701 + 22.086 / 2 - 50.773 / 4 + 47.095 / 8 - 16.458 / 16
    z = standard_normals(7)
    assert_std(device.program(g, z) - g, fit_1s)
    assert_std(device.drift(g, g, z, 86400.0) - g, fit_1d)
    halfway = math.sqrt(86400.0)  # half way from 1 s to 1 day in log time
    assert_std(device.drift(g, g, z, halfway) - g, (fit_1s + fit_1d) / 2)
    np.testing.assert_allclose(device.drift(g, g, z, 1e9), device.drift(g, g, z, 2 * 86400.0))  # held after
    half_g_max = ReRAMDevice(g_max=20.0)  # sigma scales with g_max / 40 uS
    assert_std(half_g_max.program(g / 2, z) - g / 2, fit_1s / 2)


def test_generic_device_formulas() -> None:
    device = GenericDevice(g_max=10.0, prog_noise_add=0.01, prog_noise_rel=0.05, drift_nu=0.05, drift_nu_std=0.01,
                           read_noise_rel=0.02)
    g = np.full(N, 4.0, dtype=np.float32)
    z = standard_normals(8)
    assert_std(device.program(g, z) - g, 0.01 * 10.0 + 0.05 * 4.0)
    nu_mean_factor = folded_expectation(lambda nu: (3620.0 / 20.0) ** -nu, 0.05, 0.01)  # nu clipped at 0: same
    assert_mean(device.drift(g, g, z, 3600.0) / g, nu_mean_factor, 0.01 * math.log(181.0))
    assert_std(device.read(g, g, z, 3600.0) - g, 0.02 * 4.0)
