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


@dataclass(frozen=True)
class Term:
    """One aihwkit name: where aihwkit keeps it, our key for it (None: not modelled), and why or how."""

    aihwkit: str  # aihwkit's place for it, e.g. "forward.inp_res" (forward = IOParameters)
    ours: tuple[str, ...]  # our keys ("section.name") it sets; empty when we do not model it
    how: str  # the translation, or why we do not model it
    translate: Callable[[str, Any], Any] | None = None  # aihwkit's value -> ours (None: the same value)

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


TERMS: tuple[Term, ...] = (
    Term("forward.inp_res", ("forward.inp_bits",), "bits with 1/(2^bits - 2) = inp_res (1/126 = 7 bits); <= 0: no DAC",
         res_to_bits),
    Term("forward.out_res", ("forward.out_bits",), "bits with 1/(2^bits - 2) = out_res (1/510 = 9 bits); <= 0: no ADC",
         res_to_bits),
    Term("forward.w_noise", (), "the weights' read noise per MVM: not modelled yet (aihwkit's default 0); "
         "device read noise is device.read_noise"),
    Term("forward.w_noise_type", (), "goes with w_noise: not modelled yet"),
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
    Term("clip", (), "weight clipping while training: not modelled; the trainer clips nothing"),
    Term("modifier", (), "training's weight noise: the trainer's noise injection (docs/training.md)"),
    Term("pre_post", (), "learned input ranges: not modelled (noise management abs_max instead)"),
    Term("noise_model.t_read", (), "fixed at aihwkit's 250 ns"),
    Term("noise_model.t_0", (), "fixed at aihwkit's 20 s"),
)
SAME_NAMES = ("forward.inp_bound", "forward.out_noise", "forward.out_bound", "forward.noise_management",
              "forward.bound_management", "forward.max_bm_factor", "forward.max_bm_res",
              "mapping.weight_scaling_omega", "mapping.weight_scaling_columnwise", "mapping.max_input_size",
              "mapping.max_output_size", "noise_model.g_max", "noise_model.prog_noise_scale",
              "noise_model.drift_scale", "noise_model.read_noise_scale", "drift_compensation", "t_inference")
BY_NAME = {term.name: term for term in TERMS}


def translate(key: str, value: Any) -> list[tuple[str, Any]]:
    """Our ``(section.name, value)`` settings for aihwkit's ``key`` (bare or ``section.name``), with
    one line saying so; [] when ``key`` is no aihwkit name. Refuses what we do not model."""
    term = BY_NAME.get(key.rpartition(".")[2])
    if term is None:
        return []
    if not term.ours:
        raise ConfigError(f"config key {key} is aihwkit's {term.aihwkit}, which we do not model: {term.how}")
    ours = term.translate(key, value) if term.translate else value
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
    rows += [f"| `{name}` | same | the same meaning and units |" for name in SAME_NAMES]
    rows += [f"| `{t.aihwkit}` | {', '.join(f'`{k}`' for k in t.ours) or 'not modelled'} | {t.how} |" for t in TERMS]
    return "\n".join(rows)


def _shown(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)
