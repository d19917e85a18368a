"""What an evaluation found, as objects (the Python API) and as files (``--out DIR``).

``report.json`` follows docs/report-schema.md; ``results.csv`` has one row per model and noise
level; ``accuracy_vs_noise.png`` is the plot. Every file is written to a temporary name in the
output folder and renamed into place, so a crash never leaves a half-written file.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analog_onnx.errors import AnalogError
from analog_onnx.evaluate.metrics import Midpoint, Summary, summarize
from analog_onnx.files import write_text, write_with

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class NoisePoint:
    """Accuracies of every repeat at one noise level."""

    noise_scale: float
    accuracies: tuple[float, ...]
    topk_accuracies: tuple[float, ...] | None = None
    nonfinite_outputs: int = 0  # samples, over all repeats, whose outputs held NaN or infinity (counted wrong)

    @property
    def accuracy(self) -> Summary:
        return summarize(self.accuracies)

    @property
    def topk(self) -> Summary | None:
        return summarize(self.topk_accuracies) if self.topk_accuracies is not None else None

    def to_dict(self) -> dict[str, Any]:
        acc = self.accuracy
        out: dict[str, Any] = {
            "noise_scale": self.noise_scale,
            "accuracy_mean": acc.mean,
            "accuracy_std": acc.std,
            "accuracy_ci95": list(acc.ci95) if acc.ci95 else None,
            "accuracies": list(self.accuracies),
        }
        topk = self.topk
        if topk is not None:
            out.update(topk_accuracy_mean=topk.mean, topk_accuracy_std=topk.std,
                       topk_accuracy_ci95=list(topk.ci95) if topk.ci95 else None,
                       topk_accuracies=list(self.topk_accuracies))
        if self.nonfinite_outputs:
            out["nonfinite_outputs"] = self.nonfinite_outputs
        return out


@dataclass(frozen=True)
class ModelResult:
    """One model's sweep: clean accuracy, the noisy points, and the midpoint noise level."""

    name: str
    source: str
    config: dict[str, Any]
    config_source: str
    normalization: dict[str, Any] | None
    clean_accuracy: float
    clean_topk_accuracy: float | None
    points: tuple[NoisePoint, ...]
    midpoint: Midpoint

    @property
    def midpoint_noise(self) -> float | None:
        return self.midpoint.noise

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "config": self.config,
            "config_source": self.config_source,
            "normalization": self.normalization,
            "clean_accuracy": self.clean_accuracy,
            "clean_topk_accuracy": self.clean_topk_accuracy,
            "midpoint_noise": self.midpoint.noise,
            "midpoint_status": self.midpoint.status,
            "points": [p.to_dict() for p in self.points],
        }


@dataclass(frozen=True)
class EvaluationReport:
    """The result of :func:`analog_onnx.evaluate.evaluate`; ``to_dict`` is ``report.json``."""

    data: dict[str, Any]
    settings: dict[str, Any]
    chance_accuracy: float
    models: tuple[ModelResult, ...]
    notes: tuple[str, ...] = field(default=())

    def model(self, name: str) -> ModelResult:
        for result in self.models:
            if result.name == name:
                return result
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "kind": "evaluation",
            "data": self.data,
            "settings": self.settings,
            "chance_accuracy": self.chance_accuracy,
            "notes": list(self.notes),
        }
        if len(self.models) == 1:  # the common case reads without indexing into "models"
            only = self.models[0].to_dict()
            out.update({k: only[k] for k in ("clean_accuracy", "midpoint_noise", "midpoint_status", "points")})
        out["models"] = [m.to_dict() for m in self.models]
        return out

    def csv_text(self) -> str:
        """One row per model and noise level."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["model", "noise_scale", "repeats", "accuracy_mean", "accuracy_std", "ci95_low",
                         "ci95_high", "topk_accuracy_mean", "topk_accuracy_std", "clean_accuracy"])
        for model in self.models:
            for point in model.points:
                acc, topk = point.accuracy, point.topk
                low, high = acc.ci95 or ("", "")
                writer.writerow([model.name, point.noise_scale, len(point.accuracies), acc.mean, acc.std, low, high,
                                 topk.mean if topk else "", topk.std if topk else "", model.clean_accuracy])
        return buffer.getvalue()

    def write(self, out: str | Path, *, force: bool = False) -> list[Path]:
        """Write report.json, results.csv and accuracy_vs_noise.png into ``out``; returns the paths."""
        from analog_onnx.evaluate.plots import accuracy_vs_noise_png

        folder = prepare_output_dir(out, force=force)
        return [
            write_text(folder / "report.json", dumps_json(self.to_dict()), force=True),
            write_text(folder / "results.csv", self.csv_text(), force=True),
            write_with(folder / "accuracy_vs_noise.png", lambda f: accuracy_vs_noise_png(self, f), force=True),
        ]


def dumps_json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, allow_nan=False) + "\n"


def check_output_dir(out: str | Path, *, force: bool) -> Path:
    """Fail early (before any work) when ``out`` cannot take our files."""
    folder = Path(out).expanduser()
    if folder.exists() and not folder.is_dir():
        raise AnalogError(f"--out {out} exists and is not a directory")
    if folder.is_dir() and any(folder.iterdir()) and not force:
        raise AnalogError(f"--out {out} exists and is not empty; pass --force to write into it")
    return folder


def prepare_output_dir(out: str | Path, *, force: bool) -> Path:
    folder = check_output_dir(out, force=force)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AnalogError(f"cannot create --out {out}: {e.strerror}") from None
    return folder
