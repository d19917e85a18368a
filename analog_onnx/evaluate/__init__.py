"""Monte Carlo robustness of deployed models under analog noise.

Python API (the CLI commands ``evaluate`` and ``sensitivity`` are thin wrappers)::

    from analog_onnx.evaluate import RunSettings, evaluate, sensitivity, write_report

    report = evaluate("model.onnx", "digits", config="hardening-additive",
                      noise_scales="0,log:1e-2:1e1:13", settings=RunSettings(repeats=5, seed=0))
    report.models[0].clean_accuracy, report.models[0].midpoint_noise
    for point in report.models[0].points:
        point.noise_scale, point.accuracy.mean, point.accuracy.std, point.accuracy.ci95, point.accuracies
    report.to_dict()                  # what report.json holds (docs/report-schema.md)
    write_report(report, "results/")  # report.json, results.csv, accuracy_vs_noise.png

- ``models``: one or several paths or ``onnx.ModelProto``. A clean model needs ``config`` (an
  ``AnalogConfig``, a preset name or a TOML/JSON path) and is transformed in memory; an already
  transformed model is evaluated as it is, or re-transformed when ``config`` is given.
- ``data``: a ``--data`` spec (``digits``, ``npz:FILE``, ...) or an ``analog_onnx.data.Dataset``.
- ``RunSettings``: repeats, seed (None draws one and records it), batch size, top-k, ORT threads,
  backend (``"local"`` or ``"ray"``), workers, Ray address.
- Same seed and batch size give identical numbers on every backend; noise enters through the
  model's ``noise_scale`` input and a per-batch seed through its ``seed`` input, so a sweep
  builds each session once.

``sensitivity(model, data, config=..., noise_scale=0.3)`` puts noise in one site at a time and
returns a :class:`SensitivityReport` ranked by accuracy drop (or, with ``midpoint=True``, by the
per-site midpoint noise level).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

_HOMES = {  # each name's module, imported on first use: the CLI starts without onnx and matplotlib
    "Midpoint": "metrics", "Summary": "metrics", "EvaluationReport": "report", "ModelResult": "report",
    "NoisePoint": "report", "SensitivityReport": "report", "SiteResult": "report", "write_report": "report_files",
    "RunSettings": "runner", "sensitivity": "sensitivity", "evaluate": "sweep",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    setattr(sys.modules[__name__], name, value)
    return value


class _Package(types.ModuleType):
    """Importing submodule ``sensitivity`` would bind it over the function of that name; the API
    name wins, as when this package imported its names eagerly."""

    def __setattr__(self, name: str, value: Any) -> None:
        if not (name in _HOMES and isinstance(value, types.ModuleType)):
            super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
