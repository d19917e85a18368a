"""``evaluate``: accuracy of one or more models against noise level, over Monte Carlo repeats."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from analog_onnx import arguments
from analog_onnx.arguments import spelled
from analog_onnx.config import AnalogConfig
from analog_onnx.data import Dataset
from analog_onnx.errors import AnalogError
from analog_onnx.evaluate.backends import Progress
from analog_onnx.evaluate.engine import Variant
from analog_onnx.evaluate.levels import DEFAULT_NOISE_SCALES, check_times, noise_levels
from analog_onnx.evaluate.metrics import midpoint_noise
from analog_onnx.evaluate.models import ModelSource, model_names, model_sources
from analog_onnx.evaluate.report import EvaluationReport, ModelResult
from analog_onnx.evaluate.runner import ConfigLike, RunSettings, Target, analog_variant, prepare
from analog_onnx.transform import transform_model

COMPENSATION: dict[str, tuple[bool, ...]] = {"on": (True,), "off": (False,), "both": (True, False)}


def evaluate(
    models: ModelSource | Sequence[ModelSource],
    data: str | Dataset,
    *,
    config: ConfigLike | None = None,
    noise_scales: Sequence[float] | str = DEFAULT_NOISE_SCALES,
    settings: RunSettings | None = None,
    split: str = "test",
    limit: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    t_inference: Sequence[float] | None = None,
    drift_compensation: str | None = None,
    names: Sequence[str] | None = None,
    progress: Progress | None = None,
) -> EvaluationReport:
    """Monte Carlo accuracy of each model at each noise level; see the package docstring."""
    sources = model_sources(models)
    if not sources:
        raise AnalogError("no models to evaluate")
    names = arguments.names(names, "names") if names is not None else model_names(sources)
    if len(names) != len(sources) or len(set(names)) != len(names):
        raise AnalogError("give one distinct name per model")
    levels = noise_levels(noise_scales)
    times = check_times(t_inference) if t_inference is not None else None
    compensations = COMPENSATION[check_compensation(drift_compensation)] if drift_compensation else (None,)
    run = prepare(sources, names, config, data, split, limit, mean, std, settings, progress)
    targets = run.targets
    notes = [note for t in targets for note in t.model.notes]
    timeless = [t.model.name for t in targets if not t.model.config.device.enabled]
    if times is not None and timeless:
        notes.append(_time_note(times, timeless))
    if drift_compensation and timeless:
        raise AnalogError(f"{spelled('drift_compensation')} needs a hardware config with a [device] model; "
                          f"{', '.join(timeless)} has none")
    top_k = run.settings.top_k
    if top_k is not None and run.top_k is None:
        notes.append(f"top-{top_k} accuracy skipped: a model has no more than {top_k} classes")
    device_runs = [r for t in targets for r in _device_runs(t, times, compensations)]
    points = run.run([r.variant for r in device_runs], levels, progress)
    results = tuple(_model_result(r, p, run.dataset.scored, run.chance, run.dataset.is_tokens)
                    for r, p in zip(device_runs, points, strict=True))
    return EvaluationReport(
        data=run.data_summary,
        settings={**run.recorded(levels), "t_inference": times, "drift_compensation": drift_compensation},
        chance_accuracy=run.chance, models=results, notes=tuple(notes))


@dataclass(frozen=True)
class DeviceRun:
    """One model at one time since programming and one compensation setting (devices), or as it is."""

    target: Target
    variant: Variant
    name: str
    config: AnalogConfig
    t_inference: float | None = None
    drift_compensation: bool | None = None


def check_compensation(value: str) -> str:
    if not isinstance(value, str) or value not in COMPENSATION:
        raise AnalogError(f"{spelled('drift_compensation')} must be one of {', '.join(COMPENSATION)}, "
                          f"got {value!r}")
    return value


def _device_runs(target: Target, times: Sequence[float] | None,
                 compensations: tuple[bool | None, ...]) -> list[DeviceRun]:
    """The model as it is, or with devices one run per compensation setting and time."""
    config = target.model.config
    if not config.device.enabled:
        return [DeviceRun(target, analog_variant(target), target.model.name, config)]
    runs = []
    for compensate in compensations:
        settings = config if compensate in (None, config.device.drift_compensation) else \
            replace(config, device=replace(config.device, drift_compensation=compensate))
        analog = target.model.analog if settings is config else transform_model(target.model.clean, settings)
        variant = analog_variant(target, analog)  # one model for every time: t_inference is an input
        for t in times if times is not None else (config.t_inference,):
            label = [f"t={t:g} s"] if times is not None and len(times) > 1 else []
            label += [f"compensation {'on' if compensate else 'off'}"] if len(compensations) > 1 else []
            name = f"{target.model.name} ({', '.join(label)})" if label else target.model.name
            runs.append(DeviceRun(target, replace(variant, t_inference=t), name, settings, t,
                                  settings.device.drift_compensation))
    return runs


def _model_result(run: DeviceRun, points: list, samples: int, chance: float, losses: bool) -> ModelResult:
    target = run.target
    clean = target.clean.top1 / samples
    curve = [p.accuracy.mean for p in points]
    return ModelResult(
        name=run.name, model=target.model.name, t_inference=run.t_inference,
        drift_compensation=run.drift_compensation, source=target.model.source, config=run.config.to_dict(),
        config_source=target.model.config_source,
        normalization=target.normalization.to_dict() if target.normalization else None,
        clean_accuracy=clean,
        clean_topk_accuracy=target.clean.topk / samples if target.clean.topk is not None else None,
        points=tuple(points), clean_loss=target.clean.nll / samples if losses else None,
        midpoint=midpoint_noise([p.noise_scale for p in points], curve, clean, chance))


def _time_note(times: Sequence[float], models: Sequence[str]) -> str:
    return (f"t_inference {', '.join(f'{t:g}' for t in times)} s: the hardware config of {', '.join(models)} "
            "has no [device] model, so nothing depends on time: evaluated once, the result holds for every time")
