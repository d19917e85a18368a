"""The central effect, end to end: a model trained with noise is more robust to that noise when the
deployed ONNX model is evaluated by onnxruntime; and the trainer's noisy accuracy is what
``evaluate`` measures."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from analog_onnx.config import load_preset  # noqa: E402
from analog_onnx.evaluate import RunSettings, evaluate  # noqa: E402
from analog_onnx.train.export import export_checkpoint  # noqa: E402
from analog_onnx.train.trainer import TrainConfig, train  # noqa: E402

SIGMA = 1.0  # hardening-additive: absolute additive sigma 1.0 times noise_scale
SEEDS = (0, 1)
LEVELS = [0.0, 0.25, 0.5, 1.0, 2.0, 4.0]


def _train(tmp_path, method: str, seed: int):
    config = TrainConfig(arch="mlp", data="digits", out=str(tmp_path / f"{method}-{seed}"), method=method,
                         epochs=30, batch_size=32, optimizer="adam", lr=2e-3, seed=seed, noise_scale=SIGMA,
                         hardware=load_preset("hardening-additive").to_dict(), eval_repeats=5)
    return train(config, progress=False, verbose=False)


@pytest.mark.slow
def test_noise_injection_training_beats_the_baseline_under_onnxruntime(tmp_path) -> None:
    at_sigma: dict[str, list[float]] = {"baseline": [], "nit": []}
    midpoints: dict[str, list[float]] = {"baseline": [], "nit": []}
    for seed in SEEDS:
        runs = {method: _train(tmp_path, method, seed) for method in ("baseline", "nit")}
        report = evaluate([str(runs["baseline"].model_path), str(runs["nit"].model_path)], "digits",
                          config="hardening-additive", noise_scales=LEVELS,
                          settings=RunSettings(repeats=5, seed=seed), names=["baseline", "nit"])
        for result in report.models:
            at_sigma[result.name].append(result.points[LEVELS.index(SIGMA)].accuracy.mean)
            assert result.midpoint_noise is not None, result.midpoint.status
            midpoints[result.name].append(result.midpoint_noise)
        _assert_trainer_metric_matches_onnxruntime(tmp_path, runs)
    gain = np.mean(at_sigma["nit"]) - np.mean(at_sigma["baseline"])
    assert gain > 0.05, (at_sigma, midpoints)
    assert np.mean(midpoints["nit"]) > 1.1 * np.mean(midpoints["baseline"]), midpoints


def _assert_trainer_metric_matches_onnxruntime(tmp_path, runs: dict) -> None:
    """The last epoch's torch-side noisy accuracy (5 passes) against 20 ORT passes of that model."""
    for method, run in runs.items():
        path = run.out / "last.onnx"
        export_checkpoint(run.out / "last.pt", path)
        point = evaluate(str(path), "digits", config="hardening-additive", noise_scales=[SIGMA],
                         settings=RunSettings(repeats=20, seed=123)).models[0].points[0]
        torch_side = run.history[-1]["noisy_acc"]
        spread = max(point.accuracy.std, 0.01)  # accuracy spread of one pass over the test split
        standard_error = math.sqrt(spread**2 / 5 + spread**2 / 20)
        assert abs(torch_side - point.accuracy.mean) < 4 * standard_error, (method, torch_side, point.accuracy)


@pytest.mark.slow
def test_hardware_aware_training_learns_under_programming_noise(tmp_path) -> None:
    config = TrainConfig(arch="mlp", data="digits", out=str(tmp_path / "hwa"), method="hwa", epochs=3,
                         batch_size=32, optimizer="adam", lr=2e-3, seed=0, noise_scale=1.0,
                         hardware=load_preset("aihwkit-pcm").to_dict(), eval_repeats=1)
    result = train(config, progress=False, verbose=False)
    assert result.history[-1]["clean_acc"] > 0.5  # digits: 10 classes, chance 0.1


def test_device_twin_draws_programming_noise_per_forward_pass_straight_through() -> None:
    from analog_onnx.train.hardware import attach_hardware

    model = torch.nn.Sequential(torch.nn.Linear(16, 4))
    hardware = attach_hardware(model, load_preset("aihwkit-pcm").with_overrides(["out_noise=0", "inp_bits=0",
                                                                                  "out_bits=0", "out_bound=0"]), (16,))
    x = torch.randn(8, 16)
    first, second = model(x), model(x)
    assert not torch.equal(first, second)  # a fresh programming draw per forward pass
    clean = torch.nn.functional.linear(x, model[0].weight, model[0].bias)
    assert 0 < (first - clean).abs().mean() < 0.2 * clean.abs().mean()
    first.sum().backward()  # straight-through: the clean weight gets the gradient
    assert model[0].weight.grad is not None and model[0].weight.grad.abs().sum() > 0
    hardware.remove()
    assert torch.equal(model(x), clean)
