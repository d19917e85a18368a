"""What ``evaluate`` and ``sensitivity`` share: reading the data, preparing models, running a grid.

Preparation validates everything a user can get wrong (data shape, labels, config, seeds) and
measures the clean accuracy, before any Monte Carlo work starts.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from analog_onnx.arguments import check_fields, expect, numbers, spelled
from analog_onnx.config import AnalogConfig, ConfigLike, named_config
from analog_onnx.data import Dataset, load_dataset
from analog_onnx.data.preprocess import Normalization, from_flags
from analog_onnx.errors import AnalogError, ModelError
from analog_onnx.evaluate.backends import BACKENDS, Progress, cores, run_units
from analog_onnx.evaluate.engine import Counts, Evaluator, Payload, Unit, Variant, padded
from analog_onnx.evaluate.inputs import check_labels, fit_inputs, fit_tokens
from analog_onnx.evaluate.models import ModelIO, ModelSource, PreparedModel, model_io, prepare_model
from analog_onnx.evaluate.report import NoisePoint
from analog_onnx.files import first_line
from analog_onnx.runtime import make_session
from analog_onnx.transform import read_analog_metadata

MAX_REPEATS = 100_000  # Monte Carlo error is ~0.3% of one repeat's spread long before this
MAX_THREADS = 1024


@dataclass(frozen=True)
class RunSettings:
    """How the Monte Carlo runs; checked once, recorded in the report."""

    repeats: int = 5  # Monte Carlo runs per point, in the CLI too: chips x reads
    reads: int = 1  # consecutive runs that read one programmed chip (chips = repeats / reads)
    seed: int | None = None  # None: a fresh random seed, recorded so the run can be repeated
    batch_size: int = 256
    top_k: int | None = 5
    threads: int | None = None
    backend: str = "local"
    workers: int = 1
    ray_address: str | None = None

    @property
    def chips(self) -> int:
        return self.repeats // self.reads

    def checked(self) -> RunSettings:
        """These settings, checked; a problem names the field as its caller spells it (the CLI: its flag)."""
        name = spelled
        check_fields(self, "settings")
        for field, value, low in (("reads", self.reads, 1), ("repeats", self.repeats, 1),
                                  ("batch_size", self.batch_size, 1), ("workers", self.workers, 1)):
            if value < low:
                raise AnalogError(f"{name(field)} must be >= {low}, got {value}")
        if self.repeats > MAX_REPEATS:
            raise AnalogError(f"{name('repeats')} (chips x reads) must be at most {MAX_REPEATS:,}, "
                              f"got {self.repeats:,}: the report keeps every repeat's accuracy")
        if self.backend not in BACKENDS:
            raise AnalogError(f"unknown {name('backend')} {self.backend!r}; use {' or '.join(BACKENDS)}")
        if self.top_k is not None and self.top_k < 1:
            raise AnalogError(f"{name('top_k')} must be >= 1, got {self.top_k}")
        if self.repeats % self.reads:
            raise AnalogError(f"{name('repeats')} {self.repeats} is not a whole number of chips of "
                              f"{self.reads} {name('reads')} (repeats = chips x reads)")
        if self.threads is not None and not 1 <= self.threads <= MAX_THREADS:
            raise AnalogError(f"{name('threads')} must be between 1 and {MAX_THREADS}, got {self.threads}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise AnalogError(f"{name('seed')} must be between 0 and 2**63-1, got {self.seed}")
        checked = self if self.seed is not None else replace(self, seed=secrets.randbits(63))
        if self.backend == "local" and self.threads is not None and self.threads > cores():
            checked = replace(checked, threads=cores())  # more only compete for the same cores
        return checked

    def recorded(self) -> dict[str, Any]:
        """The settings that determine the numbers (the backend and worker count do not)."""
        return {"repeats": self.repeats, "chips": self.chips, "reads": self.reads, "seed": self.seed,
                "batch_size": self.batch_size, "top_k": self.top_k}


def checked_settings(settings: RunSettings | None) -> RunSettings:
    """The caller's settings (the defaults for None), checked."""
    return (RunSettings() if settings is None else expect(settings, RunSettings, "settings")).checked()


def normalization_flags(mean: Sequence[float] | str | None, std: Sequence[float] | str | None,
                        ) -> Normalization | None:
    """``mean``/``std`` as the caller gave them (numbers, or CLI text like "0.49,0.48,0.45")."""
    return from_flags(*(None if v is None else numbers(v, spelled(name)) for v, name in ((mean, "mean"), (std, "std"))))


def config_argument(config: ConfigLike | None) -> AnalogConfig | None:
    """The ``config`` of evaluate or sensitivity (``config.named_config``); None: each model's own."""
    expect(config, ConfigLike | None, "config (an AnalogConfig, a preset name or a config file)")
    return None if config is None else named_config(config)


def read_data(data: str | Dataset, split: str, limit: int | None) -> tuple[Dataset, str]:
    """The dataset and how to name it in the report."""
    expect(data, (str, Dataset), "data (a --data spec such as 'digits', or a Dataset)")
    expect(split, str, "split")
    expect(limit, int | None, "limit")
    if isinstance(data, Dataset):
        return data.limit(limit), data.name
    return load_dataset(data, split, limit), data


@dataclass
class Target:
    """A prepared model with its fitted inputs and clean result."""

    model: PreparedModel
    io: ModelIO
    inputs_index: int
    normalization: Normalization | None
    num_outputs: int
    clean: Counts | None = None  # set once every model is prepared (top-k depends on all of them)


def prepare_targets(sources: Sequence[ModelSource], names: Sequence[str], config: AnalogConfig | None,
                    data: Dataset, flags: Normalization | None, settings: RunSettings,
                    ) -> tuple[list[Target], list[np.ndarray]]:
    """Prepare each model, fit the data to its input (sharing identical arrays) and run it clean."""
    targets: list[Target] = []
    inputs: list[np.ndarray] = []
    keys: list[tuple] = []
    sessions = []
    for source, name in zip(sources, names, strict=True):
        model = prepare_model(source, config, name)
        session = make_session(model.serialized(model.clean), threads=settings.threads, folder=model.folder)
        io = model_io(session, name, tokens=data.is_tokens)
        normalization = flags or model.normalization
        x = fit_tokens(data, io, flags, name, model.context) if data.is_tokens else \
            fit_inputs(data, io, normalization, name)
        key = (x.shape, x.dtype.str, normalization)
        if key not in keys:
            keys.append(key)
            inputs.append(x)
        fixed = io.input_shape[0]
        if fixed is not None and fixed != settings.batch_size:
            model.notes.append(f"{name} has a fixed batch size of {fixed}: it runs in batches of {fixed} "
                               f"instead of {settings.batch_size}")
        num_outputs = _probe_outputs(session, io, padded(x[:fixed or 1], fixed or 1), name, data)
        check_labels(data, num_outputs, name)
        targets.append(Target(model, io, keys.index(key), normalization, num_outputs))
        sessions.append(session)
    top_k = effective_top_k(settings, targets)
    clean = [Variant(t.model.serialized(t.model.clean), t.io.input_name, t.io.output_name, t.inputs_index,
                     None, None, fixed_batch=t.io.input_shape[0], mask_input=t.io.mask_name, folder=t.model.folder)
             for t in targets]
    payload = Payload(tuple(clean), tuple(inputs), data.y, settings.batch_size, top_k, settings.seed or 0,
                      settings.threads, mask=attention_mask(data))
    evaluator = Evaluator(payload)
    evaluator.sessions.update({v.model: s for v, s in zip(clean, sessions, strict=True)})  # reuse the probing ones
    for index, target in enumerate(targets):
        target.clean = evaluator.run(Unit(index, 0, 0, 0.0))
    return targets, inputs


@dataclass(frozen=True)
class Prepared:
    """The start ``evaluate`` and ``sensitivity`` share, done: settings checked, data read, every
    model prepared and run clean. What differs between them is only which variants run."""

    dataset: Dataset
    data_summary: dict[str, Any]
    targets: list[Target]
    inputs: list[np.ndarray]
    settings: RunSettings
    top_k: int | None
    chance: float

    def run(self, variants: list[Variant], noise_scales: Sequence[float],
            progress: Progress | None) -> list[list[NoisePoint]]:
        """Every variant at every noise level (:func:`run_grid` on these data and settings)."""
        return run_grid(variants, self.inputs, self.dataset.y, noise_scales, self.settings, self.top_k, progress,
                        attention_mask(self.dataset))

    def recorded(self, noise_scales: Sequence[float]) -> dict[str, Any]:
        """The report's ``settings`` entry."""
        return {**self.settings.recorded(), "top_k": self.top_k, "noise_scales": list(noise_scales)}


def prepare(sources: Sequence[ModelSource], names: Sequence[str], config: ConfigLike | None, data: str | Dataset,
            split: str, limit: int | None, mean: Sequence[float] | str | None, std: Sequence[float] | str | None,
            settings: RunSettings | None, progress: Progress | None) -> Prepared:
    """Check the shared arguments, read the data and prepare the models (see :class:`Prepared`)."""
    settings = checked_settings(settings)
    expect(progress, Callable | None, "progress")
    dataset, spec = read_data(data, split, limit)
    targets, inputs = prepare_targets(sources, names, config_argument(config), dataset,
                                      normalization_flags(mean, std), settings)
    return Prepared(dataset, data_summary(dataset, spec, split, limit), targets, inputs, settings,
                    effective_top_k(settings, targets), chance_level(dataset, targets))


def attention_mask(data: Dataset) -> np.ndarray | None:
    """What a token model's mask input is fed: the data's mask, or every token real."""
    if not data.is_tokens:
        return None
    return data.mask if data.mask is not None else np.ones(data.x.shape, np.int64)


def _probe_outputs(session: Any, io: ModelIO, sample: np.ndarray, name: str, data: Dataset) -> int:
    """Run one sample: it proves the model accepts the data and tells the number of classes
    (of next-token targets: the vocabulary, from scores [N, T, V])."""
    feed = {io.input_name: sample}
    if io.mask_name is not None:
        feed[io.mask_name] = np.ones(sample.shape, np.int64)
    try:
        logits = session.run([io.output_name], feed)[0]
    except Exception as e:  # onnxruntime raises its own exception types for a bad feed
        raise ModelError(f"{name} does not run on this data: {first_line(e)}") from None
    if data.y.ndim == 2:
        if logits.shape[:2] != sample.shape or logits.ndim != 3:
            raise ModelError(f"{name}: first output {io.output_name} has shape {list(logits.shape)}; next-token "
                             f"targets need scores [N, T, vocabulary] for windows {list(sample.shape)}")
        return int(logits.shape[2])
    if logits.ndim < 2 or logits.shape[0] != len(sample) or sum(d > 1 for d in logits.shape[1:]) > 1:
        raise ModelError(f"{name}: first output {io.output_name} has shape {list(logits.shape)}; "
                         "evaluate needs class scores [N, classes] (one score per class and sample)")
    return int(logits.size) // len(sample)


def chance_level(data: Dataset, targets: Sequence[Target]) -> float:
    """Top-1 accuracy of a uniform guess: one over the classes, or for next-token targets over
    the vocabulary of the model (the largest, when models differ)."""
    return 1.0 / (max(t.num_outputs for t in targets) if data.y.ndim == 2 else data.num_classes)


def effective_top_k(settings: RunSettings, targets: list[Target]) -> int | None:
    """Top-k is reported only when k is smaller than every model's class count (else it is always 1)."""
    if settings.top_k is None or settings.top_k >= min(t.num_outputs for t in targets):
        return None
    return settings.top_k


def run_grid(variants: list[Variant], inputs: list[np.ndarray], labels: np.ndarray, noise_scales: Sequence[float],
             settings: RunSettings, top_k: int | None, progress: Progress | None,
             mask: np.ndarray | None = None) -> list[list[NoisePoint]]:
    """Every variant x noise level x repeat; returns the points of each variant, in noise order.
    Units are made as workers take them and their counts kept in arrays, never as one long list.
    ``mask``: token data's attention mask (:func:`attention_mask`); with it, each point also
    records its mean loss per prediction (a language model is judged by its perplexity)."""
    payload = Payload(tuple(variants), tuple(inputs), labels, settings.batch_size, top_k, settings.seed or 0,
                      settings.threads, settings.reads, mask)
    shape = (len(variants), len(noise_scales), settings.repeats)
    units = (Unit(v, n, r, float(scale)) for v in range(shape[0]) for n, scale in enumerate(noise_scales)
             for r in range(shape[2]))
    top1, topk, nonfinite = (np.zeros(shape, np.int64) for _ in range(3))
    nll = np.zeros(shape, np.float64)
    for unit, counts in run_units(payload, units, math.prod(shape), backend=settings.backend,
                                  workers=settings.workers, ray_address=settings.ray_address, progress=progress):
        at = (unit.variant, unit.noise_index, unit.repeat)
        top1[at], topk[at], nonfinite[at], nll[at] = counts.top1, counts.topk or 0, counts.nonfinite, counts.nll
    total = int(np.count_nonzero(labels >= 0))  # predictions scored per unit
    points = []
    for v, variant in enumerate(variants):
        t = variant.t_inference if variant.t_inference_input is not None else None
        points.append([NoisePoint(float(scale), tuple((top1[v, n] / total).tolist()),
                                  tuple((topk[v, n] / total).tolist()) if top_k is not None else None,
                                  int(nonfinite[v, n].sum()), t, settings.reads,
                                  tuple((nll[v, n] / total).tolist()) if mask is not None else None)
                       for n, scale in enumerate(noise_scales)])
    return points


def analog_variant(target: Target, analog: onnx.ModelProto | ir.Model | None = None) -> Variant:
    """The variant that runs ``analog`` (default: the target's analog model) on the target's inputs,
    at the model's own ``t_inference`` (another time is ``replace(variant, t_inference=...)``)."""
    analog = analog if analog is not None else target.model.analog
    meta = read_analog_metadata(analog)
    t_input = meta.inputs.get("t_inference") if meta.config.device.enabled else None
    return Variant(target.model.serialized(analog), target.io.input_name, target.io.output_name,
                   target.inputs_index, meta.noise_scale_input, meta.seed_input, meta.inputs.get("chip_seed"),
                   t_input, meta.config.t_inference, fixed_batch=target.io.input_shape[0],
                   mask_input=target.io.mask_name, folder=target.model.folder)


def data_summary(dataset: Dataset, spec: str, split: str, limit: int | None) -> dict[str, Any]:
    """The report's ``data`` entry; token data also says its task and how many predictions it scores."""
    summary = {"spec": spec, "split": split, "limit": limit, "samples": len(dataset),
               "num_classes": dataset.num_classes}
    if dataset.is_tokens:
        task = "next_token" if dataset.y.ndim == 2 else "sequence_classification"
        summary.update(task=task, window=int(dataset.x.shape[1]), scored=dataset.scored)
    return summary
