"""A layer on a chip: mapping, keying of the draws, stuck devices, compensation, the torch twin."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from analog_onnx.devices import DeviceConfig, make_device
from analog_onnx.devices.chip import program_layer, read_weights
from analog_onnx.devices.conductance import mapping_scale, to_conductances, to_weights
from analog_onnx.devices.streams import chip_draws, read_normals
from analog_onnx.devices.torch_twins import draws_from_numpy, hwa_weights, torch_chip_draws
from analog_onnx.ops.reference import quantize

SHAPE = (64, 48)
WEIGHTS = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
PCM = DeviceConfig(model="pcm")


def run(config: DeviceConfig, chip_seed: int, seed: int, t: float, weights: np.ndarray = WEIGHTS, **kwargs):
    device = make_device(config)
    layer = program_layer(weights, device, config, chip_draws(chip_seed, 3, weights.shape), t, **kwargs)
    return layer, read_weights(layer, device, config, read_normals(seed, 3, weights.shape))


# -- conductance mapping ------------------------------------------------------------------------
@pytest.mark.parametrize("channel_axis", [None, 0, 1])
def test_pairs_hold_the_weights_in_0_to_g_max(channel_axis: int | None) -> None:
    scale = mapping_scale(WEIGHTS, 25.0, channel_axis)
    pair = to_conductances(WEIGHTS, scale, 25.0)
    assert pair.shape == (2, *SHAPE) and pair.min() == 0.0
    assert np.all((pair[0] == 0) | (pair[1] == 0))  # one device of each pair at 0 uS
    peak = np.abs(WEIGHTS).max(axis=tuple(a for a in range(2) if a != channel_axis))
    np.testing.assert_allclose(pair.max(axis=(0, *(1 + a for a in range(2) if a != channel_axis))),
                               np.full_like(peak, 25.0), rtol=1e-6)
    np.testing.assert_allclose(to_weights(pair, scale), WEIGHTS, rtol=1e-6, atol=1e-7)


def test_conductance_levels_are_the_signed_weight_grid() -> None:
    scale = mapping_scale(WEIGHTS, 25.0, 0)
    levels = to_weights(to_conductances(WEIGHTS, scale, 25.0, bits=4), scale)
    reference = quantize(WEIGHTS, bits=4, dynamic=1, axis=1)  # per-row abs-max, 7 steps each side
    np.testing.assert_allclose(levels, reference, rtol=1e-5, atol=1e-6)
    assert len(np.unique(to_conductances(WEIGHTS, scale, 25.0, bits=4))) == 8  # 0 .. 7 steps of g_max/7


def test_an_all_zero_layer_stays_near_zero_and_is_not_compensated() -> None:
    layer, read = run(PCM, chip_seed=1, seed=1, t=86400.0, weights=np.zeros(SHAPE, dtype=np.float32))
    assert float(layer.alpha) == 1.0  # both readouts at the 1e-4 floor
    assert np.abs(read).max() < 1e-6 and np.isfinite(read).all()


# -- keying: per chip by chip_seed, per read by seed -------------------------------------------
def test_per_chip_draws_depend_only_on_chip_seed_and_stream() -> None:
    first, again = chip_draws(5, 3, SHAPE), chip_draws(5, 3, SHAPE)
    other_chip, other_layer = chip_draws(6, 3, SHAPE), chip_draws(5, 4, SHAPE)
    for name in ("program", "drift", "stuck", "reference_read"):
        assert np.array_equal(getattr(first, name), getattr(again, name))
        assert not np.allclose(getattr(first, name), getattr(other_chip, name))
        assert not np.allclose(getattr(first, name), getattr(other_layer, name))
    assert not np.array_equal(first.program, first.drift)
    fresh = chip_draws(-1, 3, SHAPE), chip_draws(-1, 3, SHAPE)
    assert not np.array_equal(fresh[0].program, fresh[1].program)  # a negative chip_seed: a fresh chip


def test_a_chip_is_the_same_chip_at_every_time_and_read() -> None:
    early, read_a = run(PCM, chip_seed=5, seed=1, t=60.0)
    late, read_b = run(PCM, chip_seed=5, seed=1, t=86400.0)
    assert np.array_equal(early.g_prog, late.g_prog)  # programming does not depend on the time
    assert np.all(late.g_now <= early.g_now + 1e-6)  # the same devices, drifted further
    _, same_read = run(PCM, chip_seed=5, seed=1, t=86400.0)
    _, other_read = run(PCM, chip_seed=5, seed=2, t=86400.0)
    assert np.array_equal(read_b, same_read)
    assert not np.array_equal(read_b, other_read)
    other_chip, _ = run(PCM, chip_seed=6, seed=1, t=86400.0)
    assert not np.allclose(other_chip.g_prog, late.g_prog)


def test_read_normals_do_not_depend_on_the_chip() -> None:
    assert np.array_equal(read_normals(9, 3, SHAPE), read_normals(9, 3, SHAPE))
    assert not np.allclose(read_normals(9, 3, SHAPE), read_normals(9, 4, SHAPE))
    chip_a = chip_draws(9, 3, SHAPE)
    assert not np.allclose(read_normals(9, 3, SHAPE), chip_a.program)  # same integer, other stream


# -- stuck devices ------------------------------------------------------------------------------
def test_stuck_fractions_and_stuck_devices_do_not_drift() -> None:
    config = DeviceConfig(model="generic", drift_nu=0.1, stuck_at_zero=0.05, stuck_at_gmax=0.02)
    weights = np.random.default_rng(1).standard_normal((200, 200)).astype(np.float32)
    layer, _ = run(config, chip_seed=2, seed=0, t=86400.0, weights=weights)
    target = to_conductances(weights, layer.scale, 25.0)
    n = target.size
    for value, fraction in ((0.0, 0.05), (25.0, 0.02)):
        wrong = target != value  # devices that would not hold this value unless stuck
        stuck = (layer.g_prog == value) & wrong
        expected = fraction * wrong.mean()
        assert abs(stuck.sum() / n - expected) < 5 * math.sqrt(expected * (1 - expected) / n)
        assert np.all(layer.g_now[stuck] == value)  # stuck devices hold their value over time
    drifting = (layer.g_prog > 0) & (layer.g_prog < 25.0)
    assert np.all(layer.g_now[drifting] < layer.g_prog[drifting])


# -- drift compensation ---------------------------------------------------------------------------
def test_compensation_restores_the_mean_weight_magnitude() -> None:
    compensated = DeviceConfig(model="pcm", drift_compensation=True)
    uncompensated = DeviceConfig(model="pcm", drift_compensation=False)
    layer, _ = run(compensated, 4, 0, 86400.0)
    reference = np.abs(to_weights(layer.g_prog, layer.scale)).mean()
    ratios = [np.abs(run(c, 4, seed, 86400.0)[1]).mean() / reference
              for c in (uncompensated, compensated) for seed in range(3)]
    assert all(r < 0.8 for r in ratios[:3])  # a day of drift loses > 20 % of the mean |W|
    assert all(abs(r - 1) < 0.01 for r in ratios[3:])  # compensation: within read-noise fluctuation


def test_compensation_is_exact_for_a_deterministic_drift() -> None:
    config = DeviceConfig(model="generic", drift_nu=0.06)
    layer, read = run(config, 4, 0, 3.15e7)
    np.testing.assert_allclose(read, to_weights(layer.g_prog, layer.scale), rtol=1e-5, atol=1e-6)
    assert float(layer.alpha) > 1.5


# -- numpy reference vs torch twin --------------------------------------------------------------------
@pytest.mark.parametrize("config", [
    DeviceConfig(model="pcm", stuck_at_zero=0.01, stuck_at_gmax=0.01),
    DeviceConfig(model="reram", g_max=40.0),
    DeviceConfig(model="generic", prog_noise_add=0.02, prog_noise_rel=0.03, drift_nu=0.05, drift_nu_std=0.02,
                 read_noise_rel=0.01, drift_compensation=False),
], ids=["pcm", "reram", "generic"])
@pytest.mark.parametrize("bits,channel_axis", [(0, None), (5, 0)])
def test_torch_twin_computes_the_reference_numbers_from_the_same_draws(config, bits, channel_axis) -> None:
    device = make_device(config)
    draws = chip_draws(11, 2, SHAPE)
    z_read = read_normals(3, 2, SHAPE)
    layer = program_layer(WEIGHTS, device, config, draws, 3600.0, bits=bits, channel_axis=channel_axis)
    twin = program_layer(torch.from_numpy(WEIGHTS), device, config, draws_from_numpy(draws), 3600.0, bits=bits,
                         channel_axis=channel_axis)
    np.testing.assert_allclose(twin.g_now.numpy(), layer.g_now, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(float(twin.alpha), float(layer.alpha), rtol=1e-5)
    np.testing.assert_allclose(read_weights(twin, device, config, torch.from_numpy(z_read)).numpy(),
                               read_weights(layer, device, config, z_read), rtol=1e-5, atol=1e-5)


def test_torch_draws_give_the_reference_distribution() -> None:
    device = make_device(PCM)
    errors = {}
    for name, draws, z in (
        ("numpy", chip_draws(1, 0, SHAPE), read_normals(1, 0, SHAPE)),
        ("torch", torch_chip_draws(SHAPE, generator=torch.Generator().manual_seed(1)),
         torch.randn((2, *SHAPE), generator=torch.Generator().manual_seed(2))),
    ):
        weights = WEIGHTS if name == "numpy" else torch.from_numpy(WEIGHTS)
        layer = program_layer(weights, device, PCM, draws, 86400.0)
        errors[name] = np.asarray(read_weights(layer, device, PCM, z)) - WEIGHTS
    assert stats.ks_2samp(errors["numpy"].ravel(), errors["torch"].ravel()).pvalue > 1e-3


def test_hwa_perturbs_like_programming_and_passes_gradients_straight_through() -> None:
    device = make_device(PCM)
    weight = torch.from_numpy(WEIGHTS).requires_grad_()
    noisy = hwa_weights(weight, device, generator=torch.Generator().manual_seed(0))
    (noisy * 3.0).sum().backward()
    assert torch.equal(weight.grad, torch.full_like(weight, 3.0))
    programmed = program_layer(WEIGHTS, device, DeviceConfig(model="pcm", drift=False, drift_compensation=False),
                               chip_draws(0, 0, SHAPE), 0.0)
    reference_error = to_weights(programmed.g_prog, programmed.scale) - WEIGHTS
    hwa_error = (noisy - weight).detach().numpy()
    assert stats.ks_2samp(reference_error.ravel(), hwa_error.ravel()).pvalue > 1e-3
    first, second = hwa_weights(weight, device), hwa_weights(weight, device)
    assert not torch.equal(first, second)  # a fresh draw per batch, whatever the global seed was
