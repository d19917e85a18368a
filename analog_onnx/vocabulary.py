"""aihwkit's names for what a config says, and ours: one table, read by the config loader (TOML
and ``--set`` alike) and printed into docs/semantics.md.

A name of aihwkit's ``InferenceRPUConfig`` that means what one of our keys means is accepted
and translated (one line on stderr says into what); one we do not model is refused with why.
Names that are the same in both (``out_noise``, ``out_bound``, ``max_input_size`` ...) need no
entry: they are our keys.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from analog_onnx.errors import ConfigError

log = logging.getLogger("analog_onnx.config")

MAX_BITS = 24  # the widest DAC/ADC/weight grid a config takes
KEEP = object()  # a translation that sets nothing: aihwkit's value is what our keys already mean


@dataclass(frozen=True)
class Term:
    """One aihwkit name: where aihwkit keeps it, our key for it (None: not modelled), and why or how."""

    aihwkit: str  # aihwkit's place for it, e.g. "forward.inp_res" (forward = IOParameters)
    ours: tuple[str, ...]  # our keys ("section.name") it sets; empty when we do not model it
    how: str  # the translation, or why we do not model it
    translate: Callable[[str, Any], Any] | None = None  # aihwkit's value -> ours (None: the same; KEEP: none)

    @property
    def name(self) -> str:
        return self.aihwkit.rpartition(".")[2]


def res_to_bits(key: str, value: Any) -> int:
    """aihwkit's resolution (``1/steps``, or ``steps`` when above 1; <= 0 is no converter) as our
    signed symmetric bits: ``steps = 2^bits - 2``. A resolution that is no such grid is refused."""
    text = value.replace(" ", "") if isinstance(value, str) else ""
    if text.startswith("1/"):
        with contextlib.suppress(ValueError, ZeroDivisionError):
            value = 1 / float(text[2:])
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"config key {key} must be a number (aihwkit's resolution, e.g. 1/126), got {value!r}")
    if value <= 0:
        return 0
    steps = value if value > 1 else 1 / value
    bits = round(math.log2(steps + 2))
    if 2 <= bits <= MAX_BITS and abs(steps / (2**bits - 2) - 1) <= 0.02:
        return bits
    nearest = min(max(bits, 2), MAX_BITS)
    raise ConfigError(f"config key {key} = {value} is no grid of whole bits (aihwkit's res = 1/(2^bits - 2)); "
                      f"the nearest is 1/{2**nearest - 2} ({nearest} bits)")


def _noise_model(key: str, value: Any) -> str:
    classes = {"PCMLikeNoiseModel": "pcm", "HermesNoiseModel": "pcm-hermes", "ReRamWan2022NoiseModel": "reram"}
    if value in classes:
        return classes[value]
    raise ConfigError(f"config key {key} = {value!r}: the aihwkit noise models we model are "
                      f"{', '.join(f'{k} (device.model = {v!r})' for k, v in classes.items())}")


def _weight_noise_type(key: str, value: Any) -> Any:
    """aihwkit's ``WeightNoiseType`` (any spelling: ``ADDITIVE_CONSTANT``, ``AdditiveConstant``,
    ``WeightNoiseType.ADDITIVE_CONSTANT``): ``forward.w_noise`` is ADDITIVE_CONSTANT, NONE is no
    weight noise (``w_noise = 0``), PCM_READ is refused."""
    name = str(value).rpartition(".")[2].replace("_", "").lower()
    if name == "additiveconstant":
        return KEEP
    if name == "none":
        return 0.0
    if name == "pcmread":
        raise ConfigError(f"config key {key} = {value!r} is not modelled: PCM_READ's std per output, "
                          "w_noise sqrt(sum_j |w_ij| x_j^2), depends on every weight; ADDITIVE_CONSTANT is "
                          "(forward.w_noise), and a PCM chip's read noise per device is device.read_noise")
    raise ConfigError(f"config key {key} must be one of aihwkit's NONE, ADDITIVE_CONSTANT, PCM_READ, got {value!r}")


TERMS: tuple[Term, ...] = (
    Term("forward.inp_res", ("forward.inp_bits",), "bits with 1/(2^bits - 2) = inp_res (1/126 = 7 bits); <= 0: no DAC",
         res_to_bits),
    Term("forward.out_res", ("forward.out_bits",), "bits with 1/(2^bits - 2) = out_res (1/510 = 9 bits); <= 0: no ADC",
         res_to_bits),
    Term("forward.w_noise_type", ("forward.w_noise",), "ADDITIVE_CONSTANT is what forward.w_noise is (nothing to "
         "set); NONE sets w_noise = 0; PCM_READ (a std from every weight) is refused", _weight_noise_type),
    Term("tile_size", ("mapping.max_input_size", "mapping.max_output_size"),
         "not aihwkit's name: a square tile, both mapping sizes"),
    Term("noise_model", ("device.model",), "PCMLikeNoiseModel = pcm, HermesNoiseModel = pcm-hermes, "
         "ReRamWan2022NoiseModel = reram, each with aihwkit's default parameters", _noise_model),
    Term("forward.inp_noise", (), "input noise before the DAC: not modelled (aihwkit's default 0)"),
    Term("forward.out_noise_std", (), "a per-output spread of out_noise: not modelled (default 0)"),
    Term("forward.inp_sto_round", (), "stochastic rounding: not modelled (default off)"),
    Term("forward.out_sto_round", (), "stochastic rounding: not modelled (default off)"),
    Term("forward.inp_asymmetry", (), "a DAC asymmetry: not modelled (default 0)"),
    Term("forward.out_asymmetry", (), "an ADC asymmetry: not modelled (default 0)"),
    Term("forward.out_nonlinearity", (), "an ADC nonlinearity: not modelled (default 0)"),
    Term("forward.out_scale", (), "a fixed output scale: not modelled (default 1)"),
    Term("forward.ir_drop", (), "IR drop along the wires: not modelled (default 0)"),
    Term("forward.is_perfect", (), "a noise-free forward pass: use the preset ideal"),
    Term("forward.mv_type", (), "analog is the only kind modelled (default OnePass)"),
    Term("mapping.digital_bias", (), "biases are always digital here (aihwkit's default)"),
    Term("mapping.learn_out_scaling", (), "trained output scales: not modelled (default off)"),
    Term("mapping.out_scaling_columnwise", (), "trained output scales: not modelled (default off)"),
    Term("clip", (), "weight clipping while training (ClipParameter): not modelled"),
    Term("modifier", (), "training's weight noise: the trainer's noise injection (docs/training.md)"),
    Term("pre_post", (), "learned input ranges: not modelled (noise management abs_max instead)"),
    Term("noise_model.t_read", (), "fixed at aihwkit's 250 ns"),
    Term("noise_model.t_0", (), "fixed at aihwkit's 20 s"),
)
SAME = "the same meaning and units"
SAME_NAMES = {  # aihwkit's place -> (our key, how), where the meaning is the same
    **{f"forward.{k}": (f"forward.{k}", SAME) for k in ("inp_bound", "out_noise", "w_noise", "out_bound",
                                                       "max_bm_factor", "max_bm_res")},
    "forward.noise_management": ("forward.noise_management", 'ABS_MAX and NONE, written "abs_max" and "none"'),
    "forward.bound_management": ("forward.bound_management", 'ITERATIVE and NONE, written "iterative" and "none"'),
    **{f"mapping.{k}": (f"mapping.{k}", SAME) for k in ("weight_scaling_omega", "weight_scaling_columnwise",
                                                       "max_input_size", "max_output_size")},
    **{f"noise_model.{k}": (f"device.{k}", SAME) for k in ("g_max", "prog_noise_scale", "drift_scale",
                                                          "read_noise_scale")},
    "drift_compensation": ("device.drift_compensation", "GlobalDriftCompensation() is true, None false"),
    "t_inference": ("t_inference", "drift_analog_weights(t_inference): seconds since programming"),
}
BY_NAME = {term.name: term for term in TERMS}


def translate(key: str, value: Any) -> list[tuple[str, Any]]:
    """Our ``(section.name, value)`` settings for aihwkit's ``key`` (bare or ``section.name``), with
    one line saying so; [] when ``key`` is no aihwkit name or sets nothing. Refuses what we do not model."""
    term = BY_NAME.get(key.rpartition(".")[2])
    if term is None:
        return []
    if not term.ours:
        raise ConfigError(f"config key {key} is aihwkit's {term.aihwkit}, which we do not model: {term.how}")
    ours = term.translate(key, value) if term.translate else value
    if ours is KEEP:
        log.warning("config: aihwkit's %s = %s is what %s means: nothing to set", key, _shown(value), term.ours[0])
        return []
    settings = [(name, ours) for name in term.ours]
    if key != term.ours[0].rpartition(".")[2]:
        log.warning("config: aihwkit's %s = %s read as %s", key, _shown(value),
                    ", ".join(f"{name} = {_shown(v)}" for name, v in settings))
    return settings


def translate_sections(data: dict[str, Any]) -> dict[str, Any]:
    """A config table with aihwkit's names inside our sections replaced by ours (``[forward]
    inp_res`` -> ``inp_bits``); a name given both ways, or in another section, is refused.
    Top-level names stay: the loader tells which section they belong to."""
    out = dict(data)
    for section, table in data.items():
        if not isinstance(table, dict) or not any(name in BY_NAME for name in table):
            continue
        out[section] = table = dict(table)
        for name in [n for n in table if n in BY_NAME]:
            home = section_of(name)
            if home and home != section:
                raise ConfigError(f"config key {section}.{name} belongs under [{home}]")
            for key, value in translate(f"{section}.{name}", table.pop(name)):
                field_name = key.partition(".")[2]
                if field_name in table:
                    raise ConfigError(f"config key {key} is given twice: as {field_name} and as aihwkit's {name}")
                table[field_name] = value
    return out


def section_of(name: str) -> str | None:
    """Our section for aihwkit's ``name`` (None: not an aihwkit name we model)."""
    term = BY_NAME.get(name)
    return term.ours[0].partition(".")[0] if term and term.ours else None


def markdown_table() -> str:
    """The table docs/semantics.md shows: every aihwkit name we translate, or refuse with why."""
    rows = ["| aihwkit | here | how |", "|---|---|---|"]
    rows += [f"| `{name}` | `{ours}` | {how} |" for name, (ours, how) in SAME_NAMES.items()]
    rows += [f"| `{t.aihwkit}` | {', '.join(f'`{k}`' for k in t.ours) or 'not modelled'} | {t.how} |" for t in TERMS]
    return "\n".join(rows)


def _shown(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)
