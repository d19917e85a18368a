"""Cross-check analog_onnx.devices against aihwkit's PCMLikeNoiseModel on the same weights.

For each time since programming, programs ``--chips`` chips with each library, drifts them, reads
them once, and prints the weight error ``alpha * W_read - W`` in units of max|W|, without and
with global drift compensation: its mean, its standard deviation (average over chips, with the
standard error of that average) and the gain (least-squares slope of the read weights on W).
A second table compares the compensation factor of aihwkit's tile (TorchInferenceRPUConfig,
whose reference reads pass the periphery: output noise, ADC) with the direct readout ratio.

Run with aihwkit's own virtualenv (tools/make_aihwkit_venv.sh) and this checkout on the path:

    PYTHONPATH=. .venv-aihwkit/bin/python tools/crosscheck_devices_aihwkit.py
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from aihwkit.inference.compensation.drift import GlobalDriftCompensation
from aihwkit.inference.noise.pcm import PCMLikeNoiseModel
from aihwkit.nn import AnalogLinear
from aihwkit.simulator.configs import TorchInferenceRPUConfig

from analog_onnx.devices import DeviceConfig, make_device
from analog_onnx.devices.chip import program_layer, read_weights
from analog_onnx.devices.conductance import mapping_scale, to_conductances, to_weights
from analog_onnx.devices.streams import chip_draws, read_normals

TIMES = {"1 s": 1.0, "1 h": 3600.0, "1 day": 86400.0, "1 year": 365 * 86400.0}


def error_stats(weights: np.ndarray, read: np.ndarray) -> tuple[float, float, float]:
    """(mean, std) of the error in units of max|W|, and the gain of ``read`` on ``weights``."""
    error = (read - weights) / np.abs(weights).max()
    gain = float((read * weights).sum() / (weights * weights).sum())
    return float(error.mean()), float(error.std()), gain


def ours(weights: np.ndarray, t: float, compensate: bool, chip: int) -> np.ndarray:
    config = DeviceConfig(model="pcm", drift_compensation=compensate)
    device = make_device(config)
    layer = program_layer(weights, device, config, chip_draws(chip, 0, weights.shape), t)
    return read_weights(layer, device, config, read_normals(chip, 0, weights.shape))


def ours_remapped(weights: np.ndarray, t: float, compensate: bool, chip: int) -> np.ndarray:
    """Our device steps in aihwkit's order: aihwkit's ``apply_drift_noise`` maps the programmed
    *weights* to a fresh pair before drifting (one device of each pair back at 0 uS, max|W_prog| at
    g_max), keeping the exponents drawn from the targets; read noise is part of the drifted weights."""
    device = make_device(DeviceConfig(model="pcm"))
    draws = chip_draws(chip, 0, weights.shape)
    scale = mapping_scale(weights, device.g_max, None)
    g_target = to_conductances(weights, scale, device.g_max)
    programmed = to_weights(device.program(g_target, draws.program), scale)
    rescale = mapping_scale(programmed, device.g_max, None)
    g_prog = to_conductances(programmed, rescale, device.g_max)
    g_now = device.drift(g_target, g_prog, draws.drift, t)
    drifted = to_weights(device.read(g_prog, g_now, read_normals(chip, 0, weights.shape), t), rescale)
    alpha = np.abs(programmed).mean() / np.abs(drifted).mean() if compensate else 1.0
    return alpha * drifted


def aihwkit(weights: np.ndarray, t: float, compensate: bool, chip: int) -> np.ndarray:
    """aihwkit's tile steps: program_weights, drift_weights, then alpha from an exact eye readout."""
    torch.manual_seed(chip)
    model = PCMLikeNoiseModel()
    w = torch.from_numpy(weights)
    programmed, nu = model.apply_programming_noise(w)
    drifted = model.apply_drift_noise(programmed, nu, t)
    if compensate:
        compensation = GlobalDriftCompensation()
        alpha = compensation.apply(drifted, compensation.readout(programmed))
        drifted = drifted * alpha
    return drifted.numpy()


RUNS = {"ours": ours, "ours, aihwkit order": ours_remapped, "aihwkit": aihwkit}
STATS = ("mean", "std", "gain")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chips", type=int, default=20)
    parser.add_argument("--shape", type=int, nargs=2, default=(256, 256))
    args = parser.parse_args()
    weights = np.random.default_rng(0).standard_normal(args.shape).astype(np.float32)
    print(f"weights {args.shape[0]}x{args.shape[1]} N(0,1), {args.chips} chips, error in units of max|W|, "
          "each cell: average over chips ± its standard error")
    header = [f"{stat}: {name}" for stat in STATS for name in RUNS]
    print("| t | compensation | " + " | ".join(header) + " |")
    print("|---|---|" + "---|" * len(header))
    for label, t in TIMES.items():
        for compensate in (False, True):
            stats = {name: np.array([error_stats(weights, run(weights, t, compensate, chip))
                                     for chip in range(args.chips)]) for name, run in RUNS.items()}
            cells = [_cell(stats[name][:, column]) for column in range(len(STATS)) for name in RUNS]
            print(f"| {label} | {'on' if compensate else 'off'} | " + " | ".join(cells) + " |")
    tile_alpha_table(weights, min(args.chips, 10))


def tile_alpha_table(weights: np.ndarray, chips: int) -> None:
    """aihwkit tile's alpha over ``mean|W_prog| / mean|W_drifted|`` of the same tile weights."""
    print("\n| t | aihwkit tile alpha / direct readout ratio |\n|---|---|")
    ratios: dict[str, list[float]] = {label: [] for label in TIMES}
    for chip in range(chips):
        torch.manual_seed(chip)
        layer = AnalogLinear(weights.shape[1], weights.shape[0], bias=False, rpu_config=TorchInferenceRPUConfig())
        layer.set_weights(torch.from_numpy(weights))
        layer.eval()
        layer.program_analog_weights()
        tile = next(layer.analog_tiles())
        for label, t in TIMES.items():
            layer.drift_analog_weights(t)
            direct = tile.programmed_weights.abs().mean() / tile.tile.get_weights().abs().mean()
            ratios[label].append(float(tile.alpha) / float(direct))
    for label, values in ratios.items():
        print(f"| {label} | {_cell(np.array(values))} |")


def _cell(values: np.ndarray) -> str:
    return f"{values.mean():.5f} ± {values.std(ddof=1) / np.sqrt(len(values)):.5f}"


if __name__ == "__main__":
    main()
