"""What an evaluation or a sensitivity run found, as plain data: the Python API's objects and,
through ``to_dict``, ``report.json`` / ``sensitivity.json`` (docs/report-schema.md). Writing
them to files and plotting them is ``report_files.py``'s job.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from analog_onnx.evaluate.metrics import Midpoint, Summary, summarize, summarize_accuracy

SCHEMA_VERSION = 1  # of report.json and sensitivity.json; changes when a field changes meaning


@dataclass(frozen=True)
class NoisePoint:
    """Accuracies of every repeat at one noise level."""

    noise_scale: float
    accuracies: tuple[float, ...]
    topk_accuracies: tuple[float, ...] | None = None
    nonfinite_outputs: int = 0  # samples, over all repeats, whose outputs held NaN or infinity (counted wrong)
    t_inference: float | None = None  # s since programming, when the hardware has devices
    reads: int = 1  # consecutive repeats that read the same programmed chip
    losses: tuple[float, ...] | None = None  # mean negative log-likelihood per prediction of every repeat, nats

    @property
    def chip_spread(self) -> tuple[float, float] | None:
        """(between-chip std of the chips' mean accuracies, mean within-chip std), with chips of
        several reads; None when every repeat is its own chip."""
        if self.reads < 2 or len(self.accuracies) < 2 * self.reads:
            return None
        per_chip = np.array(self.accuracies).reshape(-1, self.reads)
        return float(per_chip.mean(axis=1).std(ddof=1)), float(per_chip.std(axis=1, ddof=1).mean())

    @property
    def accuracy(self) -> Summary:
        return summarize_accuracy(self.accuracies)

    @property
    def topk(self) -> Summary | None:
        return summarize_accuracy(self.topk_accuracies) if self.topk_accuracies is not None else None

    @property
    def perplexities(self) -> tuple[float, ...] | None:
        """exp(loss) of every repeat: for next-token targets, the perplexity."""
        return None if self.losses is None else tuple(perplexity(loss) for loss in self.losses)

    def to_dict(self) -> dict[str, Any]:
        acc = self.accuracy
        out: dict[str, Any] = {
            "noise_scale": self.noise_scale,
            "accuracy_mean": acc.mean,
            "accuracy_std": acc.std,
            "accuracy_ci95": list(acc.ci95) if acc.ci95 else None,
            "accuracies": list(self.accuracies),
        }
        if self.t_inference is not None:
            out["t_inference"] = self.t_inference
        spread = self.chip_spread
        if spread is not None:
            out.update(chips=len(self.accuracies) // self.reads, reads=self.reads, between_chip_std=spread[0],
                       within_chip_std=spread[1])
        topk = self.topk
        if topk is not None:
            out.update(topk_accuracy_mean=topk.mean, topk_accuracy_std=topk.std,
                       topk_accuracy_ci95=list(topk.ci95) if topk.ci95 else None,
                       topk_accuracies=list(self.topk_accuracies))
        if self.nonfinite_outputs:
            out["nonfinite_outputs"] = self.nonfinite_outputs
        if self.losses is not None:
            ppl = summarize(self.perplexities)
            out.update(loss_mean=summarize(self.losses).mean, losses=list(self.losses), perplexity_mean=ppl.mean,
                       perplexity_std=ppl.std, perplexity_ci95=list(ppl.ci95) if ppl.ci95 else None,
                       perplexities=list(self.perplexities))
        return out


def perplexity(loss: float) -> float:
    """exp(mean negative log-likelihood); infinite once it overflows (or the loss is infinite)."""
    return math.exp(loss) if loss < 709 else math.inf


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
    model: str = ""  # the model's own name when ``name`` also names a time or compensation setting
    t_inference: float | None = None  # s, with devices
    drift_compensation: bool | None = None  # with devices
    clean_loss: float | None = None  # mean negative log-likelihood per prediction of the clean model

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
            **({"clean_loss": self.clean_loss, "clean_perplexity": perplexity(self.clean_loss)}
               if self.clean_loss is not None else {}),
            "midpoint_noise": self.midpoint.noise,
            "midpoint_status": self.midpoint.status,
            "points": [p.to_dict() for p in self.points],
            **({"model": self.model or self.name, "t_inference": self.t_inference,
                "drift_compensation": self.drift_compensation} if self.t_inference is not None else {}),
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


MIDPOINT_STATUS_ORDER = {"below_range": 0, "found": 1, "above_range": 2, "undefined": 3}


@dataclass(frozen=True)
class SiteResult:
    """One site with noise (or every site, for the reference row)."""

    name: str
    op_type: str
    points: tuple[NoisePoint, ...]
    clean_accuracy: float
    midpoint: Midpoint | None  # only in midpoint mode

    @property
    def accuracy_drop(self) -> float:
        """Clean accuracy minus the mean accuracy at the (first) noise level."""
        return self.clean_accuracy - self.points[0].accuracy.mean

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"site": self.name, "op_type": self.op_type}
        if self.midpoint is None:
            out.update(self.points[0].to_dict(), accuracy_drop=self.accuracy_drop)
        else:
            out.update(midpoint_noise=self.midpoint.noise, midpoint_status=self.midpoint.status,
                       points=[p.to_dict() for p in self.points])
        return out


@dataclass(frozen=True)
class SensitivityReport:
    """The result of :func:`analog_onnx.evaluate.sensitivity`; ``to_dict`` is ``sensitivity.json``."""

    model: str
    source: str
    config: dict[str, Any]
    data: dict[str, Any]
    settings: dict[str, Any]
    clean_accuracy: float
    chance_accuracy: float
    all_sites: SiteResult  # noise everywhere, for reference
    sites: tuple[SiteResult, ...]  # in graph order
    notes: tuple[str, ...] = field(default=())

    @property
    def midpoint_mode(self) -> bool:
        return self.all_sites.midpoint is not None

    @property
    def noise_scale(self) -> float:
        return self.all_sites.points[0].noise_scale

    @property
    def ranked(self) -> list[SiteResult]:
        """Most fragile first: biggest drop, or lowest midpoint (ties keep graph order)."""
        if not self.midpoint_mode:
            return sorted(self.sites, key=lambda s: -s.accuracy_drop)
        return sorted(self.sites, key=lambda s: (MIDPOINT_STATUS_ORDER[s.midpoint.status],
                                                 s.midpoint.noise if s.midpoint.noise is not None else 0.0))

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": "sensitivity",
            "model": self.model,
            "source": self.source,
            "config": self.config,
            "data": self.data,
            "settings": self.settings,
            "mode": "midpoint" if self.midpoint_mode else "fixed_noise",
            "clean_accuracy": self.clean_accuracy,
            "chance_accuracy": self.chance_accuracy,
            "all_sites": self.all_sites.to_dict(),
            "sites": [dict(rank=i + 1, **s.to_dict()) for i, s in enumerate(self.ranked)],
            "notes": list(self.notes),
        }
