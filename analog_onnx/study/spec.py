"""A study file (TOML): the grid data x architectures x methods x seeds, and how every trained
model is evaluated. Parsing checks everything a user can get wrong before any work starts,
with one line naming the bad key.

Each cell of the grid has a *key*: a short hash of every setting that decides its result (not
where it runs) and of the source code that computes it (``study/code.py``). A cell's folder is
named after its key, so a changed setting or a change to that code gives a new folder and the
old result is never silently reused.

A method may list values to sweep: ``bits`` and ``range_scale`` for QAT (the paper's activation
range ``M[bits] * range_scale``, so the step is that over ``2**bits - 1``), ``noise_scale`` for
NIT; the method then expands into one method per combination, named ``NAME-b8-r2``,
``NAME-s0.3`` and so on, all of one *family* (the NIT envelope of ``results`` takes, at each
evaluation level, the family member trained nearest to it, as the paper trains one model per
test sigma).

```toml
[study]
name = "paper-digits"
data = "digits"
archs = ["mlp", "lenet5"]
seeds = [0, 1, 2]

[train]                      # TrainConfig fields shared by every training
epochs = 20
optimizer = "adam"

[train.per_arch.resnet20]    # overrides for one architecture
epochs = 10

[[method]]
name = "nit"                 # a label for tables and folders
kind = "nit"                 # baseline, qat, nit, qat+nit (the trainer's methods)
preset = "hardening-additive"
noise_scale = 0.5
ramp_epochs = 3

[evaluate]
hardware = ["hardening-additive", "aihwkit-default"]
noise_scales = "log:1e-2:1e2:9"
repeats = 3
```
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
import typing
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import tomllib

from analog_onnx.arguments import check_table, expect, spelled_as
from analog_onnx.config import MAX_INT, AnalogConfig, named_config
from analog_onnx.data import READERS, check_data_spec
from analog_onnx.errors import AnalogError
from analog_onnx.evaluate.levels import noise_levels
from analog_onnx.evaluate.runner import MAX_REPEATS
from analog_onnx.files import read_small_text


class SpecError(AnalogError):
    """The study file is invalid (names the file and the bad key)."""


# TrainConfig fields a study sets itself, per cell; the rest may be given in [train]
_CELL_FIELDS = {"arch", "data", "out", "method", "seed", "hardware", "noise_scale", "ramp_epochs", "noise_spread",
                "bits", "act_scale", "weight_bits", "export"}
# the TrainConfig fields a [[method]] may set
_METHOD_TRAIN_FIELDS = ("noise_scale", "ramp_epochs", "noise_spread", "bits", "act_scale", "weight_bits")
# keys a method may give as a list, each value a method of the family, and its name's suffix
_SWEPT = {"bits": "b", "range_scale": "r", "noise_scale": "s"}
# the Hardening-DNNs paper's activation range per bit width: max_val = M[bits] * range_scale
# (UniHD-CEG/VANT, models_noisy/*_qat.py, min_max_dict, the unsigned column)
PAPER_RANGE = {4: 15, 8: 256, 16: 65536}
# every table's keys and the type of each value: a wrong type anywhere is one line naming its key
_STUDY_TYPES = {"name": str, "data": str, "archs": list[str], "seeds": list[int], "description": str}
_LEVELS = str | float | list[float]  # noise levels: text such as "0,log:1e-2:1e2:9", one number or a list
_EVALUATE_TYPES = {"hardware": list[str], "noise_scales": _LEVELS, "repeats": int, "seed": int, "limit": int,
                   "batch_size": int, "report_levels": _LEVELS}
SEED_LIMIT = 2**63  # seeds are int64 in the trainer and in evaluate
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")  # labels become folder names (fullmatch: "$" takes a final "\n")


def cell_key(settings: dict[str, Any]) -> str:
    """A short, stable hash of a cell's settings (canonical JSON)."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Method:
    name: str
    kind: str
    train_hardware: str  # the config's name, or "none" when the method trains without one
    settings: dict[str, Any]  # TrainConfig fields this method sets (hardware resolved to a dict)
    family: str = ""  # the [[method]] name this one was expanded from ("" = its own name)
    swept: tuple[tuple[str, Any], ...] = ()  # the listed keys and this member's values

    @property
    def group(self) -> str:
        return self.family or self.name


@dataclass(frozen=True)
class TrainCell:
    """One trained model: (arch, method, seed)."""

    arch: str
    method: Method
    seed: int
    config: dict[str, Any]  # TrainConfig fields without out
    key: str  # of the config without device (where it trains does not change what it is) and the code
    code: str  # the hash of the training code (study/code.py)

    @property
    def folder(self) -> str:
        return f"train/{self.arch}-{self.method.name}-s{self.seed}-{self.key}"


@dataclass(frozen=True)
class EvalCell:
    """One trained model evaluated on one hardware over the noise grid."""

    train: TrainCell
    hardware: str
    settings: dict[str, Any]  # hardware config dict, noise scales, repeats, seed, limit, batch size
    key: str  # of the settings, the training's key and the evaluation code
    code: str  # the hash of the evaluation code

    @property
    def folder(self) -> str:
        t = self.train
        return f"evaluate/{t.arch}-{t.method.name}-s{t.seed}-{self.hardware}-{self.key}"


@dataclass(frozen=True)
class Spec:
    name: str
    description: str
    data: str
    archs: tuple[str, ...]
    seeds: tuple[int, ...]
    methods: tuple[Method, ...]
    hardware: dict[str, dict[str, Any]]  # evaluation hardware name -> config dict
    noise_scales: tuple[float, ...]
    report_levels: tuple[float, ...]
    evaluate: dict[str, Any]  # repeats, seed, limit, batch_size
    verdicts: Any  # the [verdicts] rules (study/verdicts.py Rules), or None
    train_cells: tuple[TrainCell, ...]
    eval_cells: tuple[EvalCell, ...]
    text: str  # the TOML as given, copied into the study folder


def load_spec(path: str | Path) -> Spec:
    path = Path(expect(path, (str, Path), "study file"))
    if not path.exists():
        raise SpecError(f"study file {path} does not exist")
    try:
        text = read_small_text(path, "study file")
    except AnalogError as e:
        raise SpecError(str(e)) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path}: not valid TOML: {e}") from None
    try:
        return parse_spec(raw, text)
    except AnalogError as e:
        raise SpecError(f"{path}: {e}") from None


def parse_spec(raw: dict[str, Any], text: str = "") -> Spec:
    with spelled_as(str):  # the study file's keys are the fields' names, whoever reads it (the CLI spells flags)
        return _parse(raw, text)


def _parse(raw: dict[str, Any], text: str) -> Spec:
    check_table(raw, dict.fromkeys(("study", "train", "method", "evaluate", "verdicts"), Any), "top level")
    study = check_table(_table(raw, "study"), _STUDY_TYPES, "[study]")
    name = _label(_required(study, "name", "[study]"), "[study] name")
    data = _required(study, "data", "[study]")
    if data.partition(":")[0] not in READERS:
        kinds = ", ".join(sorted(READERS))
        raise SpecError(f"[study] data: unknown data {data!r}; use KIND[:PATH] with KIND one of {kinds}")
    try:  # a missing folder is found now, not by every cell
        check_data_spec(data)
    except AnalogError as e:
        raise SpecError(f"[study] data: {e}") from None
    archs = tuple(_required(study, "archs", "[study]"))
    if not archs:
        raise SpecError("[study] archs is empty")
    _distinct(list(archs), "[study] archs")
    seeds = tuple(_int_list(_required(study, "seeds", "[study]"), "[study] seeds", SEED_LIMIT))
    train = check_table(_table(raw, "train", required=False), {**_train_types(), "per_arch": dict}, "[train]")
    per_arch = train.pop("per_arch", {})
    for arch, overrides in per_arch.items():
        if arch not in archs:
            raise SpecError(f"[train.per_arch.{arch}]: {arch} is not in [study] archs")
        if not isinstance(overrides, dict):
            raise SpecError(f"[train.per_arch.{arch}] must be a table")
        check_table(overrides, _train_types(), f"[train.per_arch.{arch}]")
    methods = tuple(m for i, entry in enumerate(_method_tables(raw)) for m in _methods(entry, i))
    _distinct([m.name for m in methods], "method names")
    evaluate = check_table(_table(raw, "evaluate"), _EVALUATE_TYPES, "[evaluate]")
    hardware = {}
    for entry in _required(evaluate, "hardware", "[evaluate]"):
        config = _hardware(entry, "[evaluate] hardware")
        label = _label(config.name, f"[evaluate] hardware {entry}: the config's name")  # names folders
        if label in hardware:
            raise SpecError(f"[evaluate] hardware: two configs are named {label}")
        hardware[label] = config.to_dict()
    if not hardware:
        raise SpecError("[evaluate] hardware is empty")
    noise_scales = tuple(noise_levels(evaluate.get("noise_scales", "0,log:1e-2:1e2:9"), "[evaluate] noise_scales"))
    report_levels = tuple(noise_levels(evaluate.get("report_levels", [1.0]), "[evaluate] report_levels"))
    missing = [level for level in report_levels if level not in noise_scales]
    if missing:
        raise SpecError(f"[evaluate] report_levels {missing} are not in noise_scales")
    run = {"repeats": _int(evaluate.get("repeats", 3), "[evaluate] repeats", 1, MAX_REPEATS),
           "seed": _int(evaluate.get("seed", 0), "[evaluate] seed", 0, SEED_LIMIT),
           "limit": _int(evaluate["limit"], "[evaluate] limit", 1) if "limit" in evaluate else None,
           "batch_size": _int(evaluate.get("batch_size", 256), "[evaluate] batch_size", 1)}

    from analog_onnx.study.code import EVALUATE_ENTRY, TRAIN_ENTRY, code_hash
    from analog_onnx.study.verdicts import parse_rules

    verdicts = parse_rules(raw["verdicts"], methods, archs, tuple(hardware)) if "verdicts" in raw else None
    train_code, evaluate_code = code_hash(TRAIN_ENTRY), code_hash(EVALUATE_ENTRY)
    train_cells = tuple(_train_cell(data, arch, method, seed, {**train, **per_arch.get(arch, {})}, train_code)
                        for arch in archs for method in methods for seed in seeds)
    eval_cells = tuple(_eval_cell(cell, label, config, noise_scales, run, evaluate_code)
                       for cell in train_cells for label, config in hardware.items())
    return Spec(name=name, description=study.get("description", ""), data=data, archs=archs, seeds=seeds,
                methods=methods, hardware=hardware, noise_scales=noise_scales, report_levels=report_levels,
                evaluate=run, verdicts=verdicts, train_cells=train_cells, eval_cells=eval_cells, text=text)


def _train_cell(data: str, arch: str, method: Method, seed: int, train: dict[str, Any], code: str) -> TrainCell:
    from analog_onnx.train.trainer import TrainConfig
    from analog_onnx.train.zoo import BUILDERS

    if arch not in BUILDERS:
        raise SpecError(f"[study] archs: unknown architecture {arch!r}; use one of {', '.join(sorted(BUILDERS))}")
    try:
        config = TrainConfig(arch=arch, data=data, method=method.kind, seed=seed, **train, **method.settings)
        config.validate()
    except (AnalogError, TypeError, ValueError) as e:
        raise SpecError(f"method {method.name}, arch {arch}: {e}") from None
    settings = {k: v for k, v in asdict(config).items() if k != "out"}
    key = cell_key({**{k: v for k, v in settings.items() if k != "device"}, "code": code})
    return TrainCell(arch, method, seed, settings, key, code)


def _eval_cell(train: TrainCell, hardware: str, config: dict[str, Any], levels: tuple[float, ...],
               run: dict[str, Any], code: str) -> EvalCell:
    settings = {"train": train.key, "hardware": config, "noise_scales": list(levels), **run}
    return EvalCell(train, hardware, settings, cell_key({**settings, "code": code}), code)


def _methods(entry: Any, index: int) -> list[Method]:
    """One [[method]] table: one method, or one per combination of its listed values."""
    where = f"[[method]] #{index + 1}"
    if not isinstance(entry, dict):
        raise SpecError(f"{where} must be a table")
    family = _label(_required(entry, "name", where), f"{where} name")
    check_table(entry, _method_types(), f"method {family}")
    listed = [k for k in _SWEPT if isinstance(entry.get(k), list)]
    if not listed:
        return [_method(entry, family)]
    for key in listed:
        if not entry[key]:
            raise SpecError(f"method {family}: {key} must be a non-empty list of numbers")
        _distinct(list(entry[key]), f"method {family}: {key}")
    members = []
    for values in itertools.product(*(entry[k] for k in listed)):
        swept = tuple(zip(listed, values, strict=True))
        name = "-".join([family, *(f"{_SWEPT[k]}{v:g}" for k, v in swept)])
        member = _method({**entry, **dict(swept)}, name)
        members.append(Method(member.name, member.kind, member.train_hardware, member.settings, family, swept))
    return members


def _method(entry: dict[str, Any], name: str) -> Method:
    """One method of ``entry`` (its keys' types checked), named ``name``."""
    from analog_onnx.train.trainer import METHODS

    where = f"method {name}"
    kind = _required(entry, "kind", where)
    if kind not in METHODS:
        raise SpecError(f"{where}: kind {kind!r} is not a training method; use one of {', '.join(METHODS)}")
    settings = {k: v for k, v in entry.items() if k in _METHOD_TRAIN_FIELDS}
    if "range_scale" in entry:
        settings["act_scale"] = _paper_step(entry, where)
    train_hardware = "none"
    if "preset" in entry and "config" in entry:
        raise SpecError(f"{where}: give preset or config, not both")
    if "preset" in entry or "config" in entry:
        config = _hardware(entry["preset"] if "preset" in entry else entry["config"], where, entry.get("set", []))
        settings["hardware"] = config.to_dict()
        train_hardware = config.name
    elif "set" in entry:
        raise SpecError(f"{where}: set needs a preset or config")
    return Method(name, kind, train_hardware, settings)


def _paper_step(entry: dict[str, Any], where: str) -> float:
    """The QAT step of the paper's range ``M[bits] * range_scale`` over ``2**bits - 1`` levels."""
    bits, scale = entry.get("bits", 8), entry["range_scale"]
    if "act_scale" in entry:
        raise SpecError(f"{where}: give act_scale or range_scale, not both")
    if bits not in PAPER_RANGE:
        known = ", ".join(map(str, PAPER_RANGE))
        raise SpecError(f"{where}: range_scale needs bits of the paper ({known}), got {bits!r}")
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not 0 < scale < math.inf:
        raise SpecError(f"{where}: range_scale must be a number > 0, got {scale!r}")
    return PAPER_RANGE[bits] * float(scale) / ((1 << bits) - 1)


def _hardware(entry: str, where: str, overrides: Sequence[str] = ()) -> AnalogConfig:
    """A preset name or a TOML/JSON config file, with optional KEY=VALUE overrides."""
    try:
        return named_config(entry, overrides)
    except AnalogError as e:
        raise SpecError(f"{where}: {e}") from None


def _method_tables(raw: dict[str, Any]) -> list[Any]:
    methods = raw.get("method")
    if not isinstance(methods, list) or not methods:
        raise SpecError("no methods: add at least one [[method]] table")
    return methods


def _train_types() -> dict[str, Any]:
    """The TrainConfig fields [train] may set, and their types."""
    from analog_onnx.train.trainer import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    return {f.name: hints[f.name] for f in fields(TrainConfig) if f.name not in _CELL_FIELDS}


def _method_types() -> dict[str, Any]:
    """What a [[method]] may say, and its type; a swept key may also be a list."""
    from analog_onnx.train.trainer import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    types = {"name": str, "kind": str, "preset": str, "config": str, "set": list[str], "range_scale": float,
             **{k: hints[k] for k in _METHOD_TRAIN_FIELDS}}
    return {k: t | list[t] if k in _SWEPT else t for k, t in types.items()}


def _table(raw: dict[str, Any], name: str, required: bool = True) -> dict[str, Any]:
    if name not in raw:
        if required:
            raise SpecError(f"missing [{name}] table")
        return {}
    if not isinstance(raw[name], dict):
        raise SpecError(f"[{name}] must be a table")
    return dict(raw[name])


def _required(table: dict[str, Any], key: str, where: str) -> Any:
    if key not in table:
        raise SpecError(f"{where}: missing {key!r}")
    return table[key]


def _label(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise SpecError(f"{where} must be letters, digits, '.', '_', '+' or '-', got {value!r}")
    return value


def _int_list(value: Any, where: str, limit: int) -> list[int]:
    if not isinstance(value, list) or not value:
        raise SpecError(f"{where} must be a non-empty list of integers")
    numbers = [_int(v, where, 0, limit) for v in value]
    _distinct(numbers, where)
    return numbers


def _int(value: Any, where: str, low: int, limit: int = MAX_INT + 1) -> int:
    """An integer in [low, limit)."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value < limit:
        raise SpecError(f"{where} must be an integer from {low} to {limit - 1:,}, got {value!r}")
    return value


def _distinct(values: list[Any], where: str) -> None:
    repeated = sorted({str(v) for v in values if values.count(v) > 1})
    if repeated:
        raise SpecError(f"{where} repeat {', '.join(repeated)}")
