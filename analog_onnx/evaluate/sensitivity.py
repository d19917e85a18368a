"""``sensitivity``: noise in one site at a time ("walking noise"), to find the fragile layers.

Each site gets its own variant of the model, transformed with ``sites=[name]``; all variants run
the same data with the same seeds, so their differences come from where the noise is. With a
fixed noise level, sites are ranked by accuracy drop from clean; with ``midpoint=True``, each site
is swept over the noise levels and ranked by its midpoint noise level (lower is more fragile).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import onnx

from analog_onnx.arguments import expect, spelled
from analog_onnx.data import Dataset
from analog_onnx.errors import AnalogError
from analog_onnx.evaluate.backends import Progress
from analog_onnx.evaluate.levels import noise_levels
from analog_onnx.evaluate.metrics import midpoint_noise
from analog_onnx.evaluate.models import ModelSource, model_names
from analog_onnx.evaluate.report import NoisePoint, SensitivityReport, SiteResult
from analog_onnx.evaluate.runner import ConfigLike, RunSettings, analog_variant, prepare
from analog_onnx.transform import analog_sites, transform_model


def sensitivity(
    model: ModelSource,
    data: str | Dataset,
    *,
    config: ConfigLike | None = None,
    noise_scale: float = 1.0,
    midpoint: bool = False,
    noise_scales: Sequence[float] | str = "log:1e-2:1e1:13",
    settings: RunSettings | None = None,
    split: str = "test",
    limit: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    progress: Progress | None = None,
) -> SensitivityReport:
    """Per-site sensitivity of one model; see the module docstring."""
    expect(model, (str, Path, onnx.ModelProto), "model")
    if expect(midpoint, bool, "midpoint"):
        levels = [s for s in noise_levels(noise_scales) if s > 0]
        if len(levels) < 2:
            raise AnalogError(f"{spelled('midpoint')} needs at least two positive {spelled('noise_scales')}")
    else:
        if not 0 < expect(noise_scale, float, "noise_scale") < math.inf:  # also false for NaN
            raise AnalogError(f"{spelled('noise_scale')} must be a finite number > 0, got {noise_scale}")
        levels = noise_levels([noise_scale], spelled("noise_scale"))
    [name] = model_names([model])
    run = prepare([model], [name], config, data, split, limit, mean, std, settings, progress)
    [target] = run.targets
    prepared = target.model
    sites = analog_sites(prepared.clean, prepared.config)
    if not sites:
        raise AnalogError(f"config {prepared.config.name!r} selects no sites in {name}: nothing to compare")
    variants = [analog_variant(target, transform_model(prepared.clean, prepared.config, sites=[s.name]))
                for s in sites]
    variants.append(analog_variant(target))
    points = run.run(variants, levels, progress)
    clean = target.clean.top1 / run.dataset.scored

    def result(site_name: str, op_type: str, site_points: list[NoisePoint]) -> SiteResult:
        mid = (midpoint_noise(levels, [p.accuracy.mean for p in site_points], clean, run.chance) if midpoint
               else None)
        return SiteResult(site_name, op_type, tuple(site_points), clean, mid)

    return SensitivityReport(
        model=name, source=prepared.source, config=prepared.config.to_dict(), data=run.data_summary,
        settings=run.recorded(levels), clean_accuracy=clean, chance_accuracy=run.chance,
        all_sites=result("(all sites)", "", points[-1]),
        sites=tuple(result(s.name, s.op_type, p) for s, p in zip(sites, points[:-1], strict=True)),
        notes=tuple(prepared.notes))
