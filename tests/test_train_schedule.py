"""NIT noise schedules: the linear ramp and the variance-aware per-batch draw around the target."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from analog_onnx.config import load_preset  # noqa: E402
from analog_onnx.errors import AnalogError  # noqa: E402
from analog_onnx.train import trainer as trainer_module  # noqa: E402
from analog_onnx.train.trainer import TrainConfig, batch_noise_level, train  # noqa: E402


def test_no_spread_trains_at_the_target_itself() -> None:
    generator = torch.Generator().manual_seed(0)
    assert [batch_noise_level(0.7, 0.0, generator) for _ in range(5)] == [0.7] * 5


def test_the_variance_aware_draw_centres_on_the_target_with_the_given_spread() -> None:
    draws = np.array([batch_noise_level(2.0, 0.25, torch.Generator().manual_seed(0)) for _ in range(3)])
    assert len(set(draws)) == 1  # the generator decides: same seed, same level
    generator = torch.Generator().manual_seed(1)
    levels = np.array([batch_noise_level(2.0, 0.25, generator) for _ in range(4000)])
    assert abs(levels.mean() - 2.0) < 0.03
    assert abs(levels.std() - 0.5) < 0.03
    wide = np.array([batch_noise_level(1.0, 2.0, generator) for _ in range(1000)])
    assert wide.min() == 0.0 and (wide > 0).mean() > 0.5  # clipped at zero, never negative


def test_the_trainer_draws_a_level_per_batch_around_the_ramp(tmp_path, monkeypatch) -> None:
    seen: list[tuple[float, float]] = []

    def recording(target: float, spread: float, generator: torch.Generator) -> float:
        level = batch_noise_level(target, spread, generator)
        seen.append((target, level))
        return level

    monkeypatch.setattr(trainer_module, "batch_noise_level", recording)
    config = TrainConfig(arch="mlp", data="digits", out=str(tmp_path), epochs=2, batch_size=64, optimizer="adam",
                         limit=512, method="nit", hardware=load_preset("hardening-additive").to_dict(),
                         noise_scale=0.4, ramp_epochs=1, noise_spread=0.5, export=False,
                         select="last", val_fraction=0)  # every sample trains: 8 batches an epoch
    result = train(config, progress=False, verbose=False)
    assert len(seen) == 2 * 8  # 512 samples in batches of 64, two epochs
    targets = [t for t, _ in seen]
    assert targets[0] == 0.0 and targets[-1] == pytest.approx(0.4)  # the ramp, then the target
    held = [level for target, level in seen if target == pytest.approx(0.4)]
    assert len(set(held)) == len(held)  # a fresh level per batch
    assert result.history[-1]["noise_scale"] == pytest.approx(0.4)  # the epoch reports the target


def test_a_negative_spread_is_refused() -> None:
    with pytest.raises(AnalogError, match="^noise_spread must be finite and >= 0, got -0.1"):
        TrainConfig(method="nit", hardware=load_preset("hardening-additive").to_dict(), noise_spread=-0.1).validate()
