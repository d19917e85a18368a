"""The hardware description: one typed configuration, loaded from and saved to TOML or JSON.

Where the meaning is the same we use aihwkit's vocabulary (``out_noise``, ``out_bound``,
``max_input_size`` ...), and its other names are translated or refused by ``vocabulary.py``
(``inp_res = 1/126`` is ``inp_bits = 7``), so its users feel at home. A config may extend a
preset (``base = "aihwkit-pcm"``). The same object drives the graph transform and the trainer's
torch twins.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import tomli_w
import tomllib

from analog_onnx import effects, vocabulary
from analog_onnx.arguments import did_you_mean, float32_problem, spelled
from analog_onnx.devices.config import DeviceConfig
from analog_onnx.errors import AnalogError, ConfigError
from analog_onnx.files import read_small_text, write_text
from analog_onnx.text import printable

PLACEMENTS = ("activations", "mvm")
NOISE_MANAGEMENT = ("abs_max", "none")
BOUND_MANAGEMENT = ("iterative", "none")
ANALOG_OP_TYPES = ("Conv", "ConvTranspose", "Gemm", "MatMul")
CHANGED = "+overrides"  # appended to the name of a preset or file config changed by --set or flags
MAX_INT = 2**31 - 1  # sizes and factors beyond this are mistakes, and int64 attributes overflow soon after
DEFAULT_ACTIVATION_OPS = (
    "Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "Relu",
    "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
)


@dataclass
class Placement:
    """Where noise enters and which layers are analog."""

    where: str = "mvm"  # "activations" (Hardening-DNNs) or "mvm" (aihwkit: around each analog layer)
    op_types: list[str] = field(default_factory=lambda: list(DEFAULT_ACTIVATION_OPS))
    network_inputs: bool = True  # "activations": also perturb the network inputs
    include: list[str] = field(default_factory=list)  # node-name regexes; empty = all
    exclude: list[str] = field(default_factory=list)  # node-name regexes
    exclude_op_types: list[str] = field(default_factory=list)
    keep_first_digital: bool = False  # leave the first analog layer digital
    keep_last_digital: bool = False  # leave the last analog layer digital
    activation_matmul: bool = False  # also treat MatMuls of two activations as analog
    noise_after_quantizer: bool = True  # "activations": noise after a node's own quantizer, where the next layer reads


@dataclass
class Noise:
    """Gaussian activation noise ("activations" placement); every sigma is scaled by noise_scale."""

    additive: float = 0.0  # sigma of additive noise
    relative: bool = False  # additive sigma is relative to the per-sample abs-max
    multiplicative: float = 0.0  # sigma of the N(1, sigma) factor


@dataclass
class Forward:
    """The periphery of an analog matrix-vector product ("mvm" placement), as aihwkit's IOParameters."""

    noise_management: str = "abs_max"  # scale each input vector by its abs-max before the DAC
    inp_bits: int = 0  # DAC bits, signed symmetric (7 = aihwkit inp_res 1/126); 0 = no DAC
    inp_bound: float = 1.0  # DAC clip bound, in normalized units
    out_noise: float = 0.0  # additive output noise sigma, in normalized output units
    w_noise: float = 0.0  # weight read noise sigma per MVM, in mapped weight units (aihwkit's ADDITIVE_CONSTANT)
    out_bits: int = 0  # ADC bits, signed symmetric (9 = aihwkit out_res 1/510); 0 = no ADC grid
    out_bound: float = 0.0  # ADC clip bound in normalized units; 0 = no clipping
    bound_management: str = "none"  # "iterative": re-run an input vector that saturates the ADC at half the input scale
    max_bm_factor: int = 1000  # iterative: stop once the input reduction exceeds this factor (aihwkit's)
    max_bm_res: float = 0.25  # iterative: ... or exceeds max_bm_res / (DAC step over the range) (aihwkit's)

    def bm_rounds(self) -> int:
        """How many times aihwkit's iterative bound management computes an MVM at most: the input
        reduction doubles from 1 each round and the round that first exceeds a limit is the last."""
        if self.bound_management == "none" or not self.out_bound:
            return 1  # without an ADC bound nothing saturates
        limit = float(self.max_bm_factor)
        if self.inp_bits:
            limit = min(limit, self.max_bm_res / (2 * self.inp_bound / ((1 << self.inp_bits) - 2)))
        rounds, reduction = 1, 1.0
        while reduction <= limit:
            rounds, reduction = rounds + 1, reduction * 2
        return rounds


@dataclass
class Mapping:
    """How a layer's weights map onto analog tiles (aihwkit's MappingParameter; "mvm" placement)."""

    weight_scaling_omega: float = 0.0  # > 0: tile weights divided by max|W|/omega, outputs times it; 0: as they are
    weight_scaling_columnwise: bool = False  # one max|W| per output instead of one per tile
    max_input_size: int = 0  # inputs per tile: larger layers are split over tiles summed digitally; 0 = one tile
    max_output_size: int = 0  # outputs per tile (their own mapping scale and bound management); 0 = one tile


@dataclass
class Weights:
    """Weight representation on the analog array."""

    bits: int = 0  # signed symmetric weight quantization; 0 = float weights
    per_channel: bool = True  # one abs-max scale per output channel (else per tensor)


@dataclass
class AnalogConfig:
    """What the hardware does. ``to_dict``/``from_dict`` round-trip exactly."""

    name: str = "custom"
    description: str = ""
    source: str = ""  # where the numbers come from
    placement: Placement = field(default_factory=Placement)
    noise: Noise = field(default_factory=Noise)
    forward: Forward = field(default_factory=Forward)
    mapping: Mapping = field(default_factory=Mapping)
    weights: Weights = field(default_factory=Weights)
    device: DeviceConfig = field(default_factory=DeviceConfig)  # the devices holding the weights ("mvm" only)
    t_inference: float = 0.0  # s since the weights were programmed: the model's default time (drift, read noise)

    # -- serialization -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AnalogConfig:
        """A config from a table: with ``base = "PRESET"`` the table overrides that preset's keys,
        without it the defaults'; aihwkit's names are translated (``vocabulary.py``)."""
        if isinstance(data, dict):
            data = vocabulary.translate_sections(data)
            if "base" in data:
                data = extend_preset(data.pop("base"), data)
        config = _build(cls, data, prefix="")
        config.validate()
        return config

    @classmethod
    def load(cls, path: str | Path, base: str | None = None) -> AnalogConfig:
        """Read a TOML (``.toml``) or JSON file. Without a ``name`` it is named after the file; a
        file that names a preset but changes it is called ``PRESET+overrides``. ``base`` (``-p``
        beside ``-c``) is the preset the file extends, as its own ``base = ...`` would be."""
        path = Path(path)
        try:
            text = read_small_text(path, "config")
        except AnalogError as e:
            raise ConfigError(str(e)) from None
        try:
            data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"config {path} is not valid {path.suffix.lstrip('.') or 'TOML'}: {e}") from None
        except RecursionError:
            raise ConfigError(f"config {path} is nested too deeply to be a config") from None
        if isinstance(data, dict) and "name" not in data:
            data["name"] = path.stem
        if isinstance(data, dict) and base is not None and data.setdefault("base", base) != base:
            raise ConfigError(f"config {path} extends preset {data['base']!r}, not {base!r}: give one of them")
        if isinstance(data, dict) and "base" not in data:
            _note_defaults(path, data)
        config = cls.from_dict(data)
        if config.name in preset_names() and config != load_preset(config.name):
            config.name += CHANGED
        return config

    def save(self, path: str | Path) -> None:
        path = Path(path)
        write_text(path, json.dumps(self.to_dict(), indent=2) if path.suffix == ".json" else self.to_toml(), force=True)

    # -- changes -------------------------------------------------------------------------
    def with_overrides(self, assignments: list[str]) -> AnalogConfig:
        """Apply ``key=value`` strings; a key is ``section.name`` or a ``name`` unique to one section."""
        data = self.to_dict()
        for assignment in assignments:
            key, sep, raw = assignment.partition("=")
            if not sep:
                raise ConfigError(f"{spelled('set')} expects key=value, got {assignment!r}")
            for section, name, value in _settings(key.strip(), raw.strip(), data):
                target = data[section] if section else data
                target[name] = _coerce(value, target[name], f"{section}.{name}" if section else name)
        return self._changed_to(data)

    def with_placement(self, **changes: Any) -> AnalogConfig:
        """This config with some ``placement`` fields replaced (the transform's flags)."""
        data = self.to_dict()
        data["placement"].update(changes)
        return self._changed_to(data)

    def _changed_to(self, data: dict[str, Any]) -> AnalogConfig:
        """A config from ``data``; a changed config no longer carries its origin's bare name."""
        if data != self.to_dict() and data["name"] == self.name and not self.name.endswith(CHANGED):
            data["name"] = self.name + CHANGED
        return AnalogConfig.from_dict(data)

    @property
    def has_noise(self) -> bool:
        if self.placement.where == "activations":
            return self.noise.additive > 0 or self.noise.multiplicative > 0
        return self.forward.out_noise > 0 or self.forward.w_noise > 0 or self.device.enabled

    @property
    def has_quantization(self) -> bool:
        f = self.forward
        mvm_quant = self.placement.where == "mvm" and (f.inp_bits > 0 or f.out_bits > 0 or f.out_bound > 0)
        return mvm_quant or self.weights.bits > 0

    # -- validation ----------------------------------------------------------------------
    def validate(self) -> None:
        p, n, f, w = self.placement, self.noise, self.forward, self.weights
        for key, value in _flat_items(self.to_dict()):  # floats become float32 attributes, ints int64 ones
            if isinstance(value, float):
                problem = float32_problem(value)
                _check(problem is None, key, f"{problem}, got {value}")
            elif isinstance(value, int) and not isinstance(value, bool):
                _check(abs(value) <= MAX_INT, key, f"must be at most {MAX_INT:,} in magnitude, got {value}")
        _check(p.where in PLACEMENTS, "placement.where", f"must be one of {', '.join(PLACEMENTS)}")
        _check(f.noise_management in NOISE_MANAGEMENT, "forward.noise_management",
               f"must be one of {', '.join(NOISE_MANAGEMENT)}")
        for key, value in (("noise.additive", n.additive), ("noise.multiplicative", n.multiplicative),
                           ("forward.out_noise", f.out_noise), ("forward.w_noise", f.w_noise),
                           ("forward.out_bound", f.out_bound)):
            _check(value >= 0, key, "must be >= 0")
        _check(f.inp_bound > 0, "forward.inp_bound", "must be > 0")
        _check(math.isfinite(self.t_inference) and self.t_inference >= 0, "t_inference",
               "must be a finite number >= 0 (seconds since programming)")
        self.device.validate()
        _check(not (self.device.enabled and p.where != "mvm"), "device.model",
               'needs placement.where = "mvm" (devices hold the weights of analog layers)')
        _check(f.bound_management in BOUND_MANAGEMENT, "forward.bound_management",
               f"must be one of {', '.join(BOUND_MANAGEMENT)}")
        _check(f.max_bm_factor >= 1, "forward.max_bm_factor", "must be >= 1")
        _check(f.max_bm_res > 0, "forward.max_bm_res", "must be > 0")
        m = self.mapping
        _check(m.weight_scaling_omega >= 0, "mapping.weight_scaling_omega", "must be >= 0 (0 = no remapping)")
        _check(not (m.weight_scaling_columnwise and not m.weight_scaling_omega), "mapping.weight_scaling_columnwise",
               "needs mapping.weight_scaling_omega > 0")
        for key, size in (("mapping.max_input_size", m.max_input_size), ("mapping.max_output_size", m.max_output_size)):
            _check(size >= 0, key, "must be >= 0 (0 = one tile)")
        _check(not (p.where == "activations" and (m != Mapping() or f.bound_management != "none")), "mapping",
               "and forward.bound_management apply to placement.where = \"mvm\" only")
        for key, bits in (("forward.inp_bits", f.inp_bits), ("forward.out_bits", f.out_bits),
                          ("weights.bits", w.bits)):
            _check(bits == 0 or 2 <= bits <= 24, key, "must be 0 (off) or between 2 and 24")
        _check(not (f.out_bits and not f.out_bound), "forward.out_bits", "needs forward.out_bound > 0")
        for key in ("include", "exclude"):
            for pattern in getattr(p, key):
                try:
                    re.compile(pattern)
                except re.error as e:
                    raise ConfigError(f"placement.{key}: bad regex {pattern!r}: {e}") from None
        ignored = self._ignored_keys()
        if ignored:
            key, other = ignored[0]
            raise ConfigError(f"config key {key} has no effect under placement.where = {p.where!r} "
                              f"(only under {other!r}): remove it, or change placement.where")

    def _ignored_keys(self) -> list[tuple[str, str]]:
        """(key, the placement that reads it) for each key set away from its default that only the
        effects of another placement read (``analog_onnx/effects.py``), in the config's order."""
        mine, default = dict(_flat_items(self.to_dict())), dict(_flat_items(AnalogConfig().to_dict()))
        return [(key, other) for key in mine if mine[key] != default[key]
                and (other := effects.only_read_elsewhere(key, self.placement.where))]


def _flat_items(data: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in data.items():
        if isinstance(value, dict):
            yield from _flat_items(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config key {key} {message}")


def _build(cls: type, data: Any, prefix: str) -> Any:
    """Build a dataclass from a dict, rejecting unknown keys and wrong types by name."""
    where = prefix.rstrip(".") or "config"
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key == "base":
            raise ConfigError(f"config key {prefix}base belongs at the top of the config, not in [{where}]")
        if key not in fields:
            home = _home_section(key) if not prefix else None
            if home:
                raise ConfigError(f"config key {key} belongs under [{home}] (as {home}.{key})")
            raise ConfigError(f"unknown config key {prefix}{key}{did_you_mean(key, [*fields, *vocabulary.BY_NAME])}")
        default = getattr(cls(), key)
        if dataclasses.is_dataclass(default):
            kwargs[key] = _build(type(default), value, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, default, f"{prefix}{key}")
    return cls(**kwargs)


def _coerce(value: Any, default: Any, key: str) -> Any:
    expected = type(default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"config key {key} must be a list of strings")
        return list(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(f"config key {key} must be {expected.__name__}, got {value!r}")
    return value


def _settings(key: str, raw: str, data: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """The ``(section, name, value)`` settings of one ``--set key=value``: ``key`` is ours
    (``section.name``, or a ``name`` unique to one section) or aihwkit's (translated)."""
    try:
        section, name = _resolve_key(key, data)
    except ConfigError:
        section_given, _, bare = key.rpartition(".")
        home = vocabulary.section_of(bare)
        if bare not in vocabulary.BY_NAME:
            raise
        if section_given and home and section_given != home:
            raise ConfigError(f"config key {key} belongs under [{home}] (as {home}.{bare})") from None
        return [(*k.split("."), v) for k, v in vocabulary.translate(key, _parse_value(raw, None))]
    return [(section, name, _parse_value(raw, (data[section] if section else data)[name]))]


def _resolve_key(key: str, data: dict[str, Any]) -> tuple[str, str]:
    if "." in key:
        section, _, name = key.partition(".")
        if isinstance(data.get(section), dict) and name in data[section]:
            return section, name
    elif key in data and not isinstance(data[key], dict):
        return "", key
    else:
        owners = [s for s, v in data.items() if isinstance(v, dict) and key in v]
        if len(owners) == 1:
            return owners[0], key
        if len(owners) > 1:
            raise ConfigError(f"config key {key} is ambiguous: say {' or '.join(f'{o}.{key}' for o in owners)}")
    known = [*_flat_keys(data), *(k for k, v in data.items() if not isinstance(v, dict)), *vocabulary.BY_NAME]
    known += [k.partition(".")[2] for k in _flat_keys(data)]
    raise ConfigError(f"unknown config key {key}{did_you_mean(key, known)}")


def _flat_keys(data: dict[str, Any]) -> list[str]:
    return [f"{s}.{k}" for s, v in data.items() if isinstance(v, dict) for k in v]


def _home_section(name: str) -> str | None:
    """The section a bare top-level ``name`` belongs in: ours, or ours for aihwkit's name."""
    owners = [s for s, v in AnalogConfig().to_dict().items() if isinstance(v, dict) and name in v]
    return owners[0] if len(owners) == 1 else vocabulary.section_of(name)


def _parse_value(raw: str, current: Any) -> Any:
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word: a string
    if isinstance(current, list) and isinstance(value, str):
        value = [v for v in value.split(",") if v]
    return value


def extend_preset(base: Any, data: dict[str, Any]) -> dict[str, Any]:
    """Preset ``base`` as a table with ``data``'s keys put over it, section by section; without a
    description of its own, the result says what it changed."""
    if not isinstance(base, str):
        raise ConfigError(f"config key base must be a preset name (string), got {base!r}")
    merged = load_preset(base).to_dict()
    for key, value in data.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    if "description" not in data:
        changed = [f"{k}" for k, v in _flat_items(data) if k not in ("name", "source")]
        merged["description"] = f"preset {base} with {', '.join(changed) or 'nothing'} changed"
    return merged


def _note_defaults(path: Path, data: dict[str, Any]) -> None:
    """One line when a file without ``base`` leaves keys to the defaults: a partial file that
    meant to change a preset would otherwise silently lose the preset's other keys."""
    given = {k for k, _ in _flat_items(data)}
    unset = [k for k, _ in _flat_items(AnalogConfig().to_dict()) if k not in given and "." in k]
    if unset and any("." in k for k in given):
        vocabulary.log.warning("config %s: the %d keys it does not set keep AnalogConfig's defaults, not a "
                               'preset\'s; write base = "PRESET" at its top to start from a preset',
                               printable(path), len(unset))


# -- presets ----------------------------------------------------------------------------------
def preset_names() -> list[str]:
    files = resources.files("analog_onnx.presets").iterdir()
    return sorted(f.name.removesuffix(".toml") for f in files if f.name.endswith(".toml"))


ConfigLike = AnalogConfig | str | Path  # a config, a preset name, or a TOML/JSON file


def load_preset(name: str) -> AnalogConfig:
    if name not in preset_names():
        raise ConfigError(f"unknown preset {name!r}{did_you_mean(name, preset_names())}; known: "
                          f"{', '.join(preset_names())}")
    text = resources.files("analog_onnx.presets").joinpath(f"{name}.toml").read_text()
    return AnalogConfig.from_dict(tomllib.loads(text))


def resolve_config(preset: str | None, config_file: str | Path | None, overrides: list[str]) -> AnalogConfig:
    """The config a command asked for: a preset, a file, or a file over a preset (as its ``base``),
    then ``--set`` overrides."""
    if not (preset or config_file):
        raise ConfigError(f"choose the hardware: --preset NAME ({', '.join(preset_names())}; "
                          "see `analog-onnx presets`) or --config FILE")
    if preset and config_file:
        config = AnalogConfig.load(config_file, base=preset)
    else:
        config = AnalogConfig.load(config_file) if config_file else load_preset(preset)
    return config.with_overrides(overrides) if overrides else config


def named_config(config: ConfigLike, overrides: Sequence[str] = ()) -> AnalogConfig:
    """A config as the API and study files name one: an AnalogConfig as it is, a TOML/JSON file
    (a Path, or a name ending in .toml or .json) or else a preset's name; then ``overrides``."""
    if isinstance(config, AnalogConfig):
        return config.with_overrides(list(overrides)) if overrides else config
    is_file = isinstance(config, Path) or str(config).endswith((".toml", ".json"))
    return resolve_config(None if is_file else str(config), config if is_file else None, list(overrides))
