"""The op set, declared once: what every implementation, benchmark and conformance test reads.

Each ``OpSchema`` gives an op's inputs and outputs (names as the function bodies use them; which
inputs a node may leave out), its attributes with their defaults (a ``Required`` kind for none),
which attributes are noise sigmas (a case with all of them 0 is deterministic), whether it exists
only in the native library, and named example ``cases`` (attribute sets): the configurations the
presets emit (``benchmarked``) and the corners worth testing. The four implementations are found
by name: ``functions.<Name>`` (ONNX function body), ``reference.<snake_name>`` (numpy),
``torch_twins.<snake_name>`` and the native kernel registered as ``<Name>``.

Each numeric attribute also has its ``Interval`` of valid values. The native kernels read their
attributes from this declaration (``native/generate.py`` writes it into a header at build time):
type, default and interval, so a node whose attribute is of the wrong type or out of its interval
is refused by name instead of computed with a silent default.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from enum import IntEnum


@dataclass(frozen=True)
class Required:
    """An attribute without a default, of this kind (the kind of a default otherwise)."""

    kind: str  # "int", "float", "string", "ints" or "floats"


def kind_of(value: object) -> str:
    """The ONNX attribute kind of a default value or ``Required``: "int", "float", "string", "ints", "floats"."""
    if isinstance(value, Required):
        return value.kind
    if isinstance(value, tuple | list):
        return "floats" if any(isinstance(v, float) for v in value) else "ints"
    return {bool: "int", int: "int", float: "float", str: "string"}[type(value)]


@dataclass(frozen=True)
class Interval:
    """The valid values of a numeric attribute (of each element of a list attribute): from ``low``
    to ``high``, an end excluded when ``open_low``/``open_high``; an infinite end that is closed
    admits infinity itself. NaN is never valid."""

    low: float
    high: float
    open_low: bool = False
    open_high: bool = False

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.open_low else value >= self.low
        below = value < self.high if self.open_high else value <= self.high
        return bool(above and below)

    def describe(self, integer: bool) -> str:
        """What a value must be, for an error message: "an integer from 0 to 24", "a finite number > 0"."""
        if integer:
            if (self.low, self.high) == (0, 1):
                return "0 or 1"
            if math.isinf(self.high):
                return "an integer" if math.isinf(self.low) else f"an integer >= {int(self.low)}"
            return f"an integer from {int(self.low)} to {int(self.high)}"
        low = "" if math.isinf(self.low) else f" {'>' if self.open_low else '>='} {self.low:g}"
        if math.isinf(self.high):
            return f"a number{low} (inf allowed)" if not self.open_high else f"a finite number{low}"
        if not self.open_low and not self.open_high:
            return f"a number from {self.low:g} to {self.high:g}"
        return f"a number{low} {'<' if self.open_high else '<='} {self.high:g}"


ANY_INTEGER = Interval(-math.inf, math.inf)  # checked where it is used (an axis against the rank)
FLAG = Interval(0, 1)
BITS = Interval(0, 24)  # 0: no grid; a float32 grid of more than 2^24 levels has no exact steps
STREAM = Interval(0, 2**31 - 1)  # streams are counted from 0 per graph; the bound keeps stream arithmetic exact
COUNT = Interval(0, 2**62)  # a size (0: one tile)
FINITE_NON_NEGATIVE = Interval(0, math.inf, open_high=True)
FINITE_POSITIVE = Interval(0, math.inf, open_low=True, open_high=True)
POSITIVE = Interval(0, math.inf, open_low=True)  # a bound: inf for none (with no grid)
FRACTION = Interval(0, 1)
GEOMETRY = Interval(1, 2**31 - 1)  # a stride or dilation
PADDING = Interval(0, 2**31 - 1)
BM_ROUNDS = Interval(1, 62)  # round r scales the input by 2^-r


class ChainStep(IntEnum):
    """The steps of a NoiseChain program (its ``steps`` attribute)."""

    NOISE = 0  # the next Noise: its sigmas and stream
    AFFINE = 1  # the next row of scale and shift, per channel
    RESIDUAL = 2  # + input R
    RELU = 3


@dataclass(frozen=True)
class OpSchema:
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attributes: dict[str, int | float | str | tuple[int, ...] | tuple[float, ...] | Required]  # name -> default
    intervals: dict[str, Interval]  # every numeric attribute's valid values
    sigmas: tuple[str, ...] = ()  # attributes that are noise sigmas (times the noise_scale input)
    optional: tuple[str, ...] = ()  # inputs a node may leave out (every other one it must give)
    native_only: bool = False  # put in place by native sessions only; never in a file
    native: bool = True  # has a native kernel (else native sessions run its function body)
    product: bool = False  # computes a matrix product: summation order differs between implementations
    cases: dict[str, dict[str, int | float]] = field(default_factory=dict)
    benchmarked: tuple[str, ...] = ()  # the cases tools/bench_kernels.py times: what the presets emit

    @property
    def python_name(self) -> str:
        """The name of the numpy reference and the torch twin: ``MvmInput`` -> ``mvm_input``."""
        return re.sub(r"(?<!^)(?=[A-Z])", "_", self.name).lower()

    def is_random(self, attributes: dict[str, int | float | tuple | list]) -> bool:
        """Whether a node with these attributes draws noise."""
        values = (attributes.get(sigma, self.attributes[sigma]) for sigma in self.sigmas)
        return any(any(value) if isinstance(value, tuple | list) else value for value in values)


_TILE_ATTRIBUTES = {"inp_bits": 0, "inp_bound": 1.0, "noise_management": 1, "out_noise": 0.0, "out_bits": 0,
                    "out_bound": math.inf, "bm_rounds": 1, "max_input_size": 0, "max_output_size": 0,
                    "weight_scaling_omega": 0.0, "weight_scaling_columnwise": 0, "w_noise": 0.0, "stream": 0}
_TILE_INTERVALS = {"inp_bits": BITS, "inp_bound": POSITIVE, "noise_management": FLAG, "out_noise": FINITE_NON_NEGATIVE,
                   "out_bits": BITS, "out_bound": POSITIVE, "bm_rounds": BM_ROUNDS, "max_input_size": COUNT,
                   "max_output_size": COUNT, "weight_scaling_omega": FINITE_NON_NEGATIVE,
                   "weight_scaling_columnwise": FLAG, "w_noise": FINITE_NON_NEGATIVE, "stream": STREAM}
_TILE_SIGMAS = ("out_noise", "w_noise")
_MVM_OUTPUT_ATTRIBUTES = {"weight_scale": 1.0, "out_noise": 0.0, "out_bits": 0, "out_bound": math.inf, "axis": 1,
                          "stream": 0}
_MVM_OUTPUT_INTERVALS = {"weight_scale": FINITE_POSITIVE, "out_noise": FINITE_NON_NEGATIVE, "out_bits": BITS,
                         "out_bound": POSITIVE, "axis": ANY_INTEGER, "stream": STREAM}
_EPILOGUE = {"relu": FLAG}
# where a native session's tile reads a constant W itself (native_graph): the model's data file,
# the byte offset, W's [outputs, inputs], and whether the file holds it as [inputs, outputs]
_STORED_WEIGHTS = {"weight_file": "", "weight_offset": 0, "weight_shape": (0, 0), "weight_transposed": 0}
_STORED_WEIGHTS_INTERVALS = {"weight_offset": COUNT, "weight_shape": COUNT, "weight_transposed": FLAG}

OPS: tuple[OpSchema, ...] = (
    OpSchema("Noise", ("X", "noise_scale", "seed"), ("Y",),
             {"sigma_add": 0.0, "sigma_mul": 0.0, "relative": 0, "stream": 0},
             {"sigma_add": FINITE_NON_NEGATIVE, "sigma_mul": FINITE_NON_NEGATIVE, "relative": FLAG, "stream": STREAM},
             sigmas=("sigma_add", "sigma_mul"),
             cases={"additive": {"sigma_add": 1.0},
                    "add + mul": {"sigma_add": 0.1, "sigma_mul": 0.1},
                    "multiplicative": {"sigma_mul": 0.2, "stream": 2},
                    "relative, both": {"sigma_add": 0.3, "sigma_mul": 0.2, "relative": 1, "stream": 9},
                    "relative": {"sigma_add": 0.3, "relative": 1, "stream": 3}},
             benchmarked=("additive", "add + mul")),
    OpSchema("Quantize", ("X",), ("Y",), {"bits": Required("int"), "bound": 1.0, "signed": 1, "dynamic": 0, "axis": 0},
             {"bits": BITS, "bound": POSITIVE, "signed": FLAG, "dynamic": FLAG, "axis": ANY_INTEGER},
             cases={"dynamic": {"bits": 8, "dynamic": 1, "axis": 1},
                    "4-bit": {"bits": 4},
                    "unsigned": {"bits": 8, "bound": 2.5, "signed": 0},
                    "per vector": {"bits": 3, "dynamic": 1, "axis": -1},
                    "per tensor": {"bits": 7, "dynamic": 1, "axis": 0},
                    "axis 2": {"bits": 5, "dynamic": 1, "axis": 2}},
             benchmarked=("dynamic",)),
    OpSchema("MvmInput", ("X",), ("Xn", "S"), {"inp_bits": 0, "inp_bound": 1.0, "noise_management": 1, "axis": 1},
             {"inp_bits": BITS, "inp_bound": POSITIVE, "noise_management": FLAG, "axis": ANY_INTEGER},
             cases={"7-bit DAC": {"inp_bits": 7},
                    "unmanaged": {"inp_bits": 0, "inp_bound": 0.5, "noise_management": 0, "axis": -1},
                    "per vector": {"inp_bits": 5, "inp_bound": 0.8, "axis": -1}},
             benchmarked=("7-bit DAC",)),
    OpSchema("MvmOutput", ("Y", "S", "noise_scale", "seed"), ("Z",), _MVM_OUTPUT_ATTRIBUTES, _MVM_OUTPUT_INTERVALS,
             sigmas=("out_noise",),
             cases={"noise, 9-bit ADC": {"out_noise": 0.06, "out_bits": 9, "out_bound": 12.0, "weight_scale": 0.5},
                    "9-bit ADC": {"weight_scale": 0.37, "out_bits": 9, "out_bound": 12.0},
                    "clip only": {"weight_scale": 1.5, "out_bound": 2.0, "axis": -1},
                    "plain": {},
                    "noise per vector": {"out_noise": 0.1, "out_bound": 3.0, "axis": -1, "stream": 2}},
             benchmarked=("noise, 9-bit ADC",)),
    OpSchema("DeviceWeights", ("W", "noise_scale", "seed", "chip_seed", "t_inference"), ("W_read", "alpha"),
             {"device": "pcm", "g_max": 25.0, "prog_noise_scale": 1.0, "drift": 1, "drift_scale": 1.0, "read_noise": 1,
              "read_noise_scale": 1.0, "drift_compensation": 1, "stuck_at_zero": 0.0, "stuck_at_gmax": 0.0,
              "prog_noise_add": 0.0, "prog_noise_rel": 0.0, "drift_nu": 0.0, "drift_nu_std": 0.0,
              "read_noise_rel": 0.0, "bits": 0, "per_channel": 0, "stream": 0},
             {"g_max": FINITE_POSITIVE, "prog_noise_scale": FINITE_NON_NEGATIVE,
              "drift": FLAG, "drift_scale": FINITE_NON_NEGATIVE, "read_noise": FLAG,
              "read_noise_scale": FINITE_NON_NEGATIVE, "drift_compensation": FLAG, "stuck_at_zero": FRACTION,
              "stuck_at_gmax": FRACTION,
              "prog_noise_add": FINITE_NON_NEGATIVE, "prog_noise_rel": FINITE_NON_NEGATIVE,
              "drift_nu": FINITE_NON_NEGATIVE, "drift_nu_std": FINITE_NON_NEGATIVE,
              "read_noise_rel": FINITE_NON_NEGATIVE, "bits": BITS, "per_channel": FLAG, "stream": STREAM},
             sigmas=("prog_noise_scale", "drift_scale", "read_noise_scale", "stuck_at_zero", "stuck_at_gmax"),
             cases={"pcm": {},
                    "pcm per channel, 4-bit, stuck": {"per_channel": 1, "bits": 4, "stuck_at_zero": 0.05,
                                                      "stuck_at_gmax": 0.02, "stream": 3},
                    "reram": {"device": "reram", "g_max": 40.0, "read_noise": 0, "stream": 1},
                    "generic": {"device": "generic", "prog_noise_add": 0.01, "prog_noise_rel": 0.05,
                                "drift_nu": 0.05, "drift_nu_std": 0.02, "read_noise_rel": 0.02, "stream": 7},
                    "pcm-hermes": {"device": "pcm-hermes", "g_max": 20.7, "stream": 2},
                    "levels only": {"prog_noise_scale": 0.0, "drift": 0, "read_noise": 0, "drift_compensation": 0,
                                    "bits": 5, "per_channel": 1}},
             benchmarked=("pcm",)),
    OpSchema("MvmOutputEpilogue", ("Y", "S", "noise_scale", "seed", "scale", "shift"), ("Z",),
             {**_MVM_OUTPUT_ATTRIBUTES, "relu": 0}, {**_MVM_OUTPUT_INTERVALS, **_EPILOGUE}, sigmas=("out_noise",),
             native_only=True),
    OpSchema("NoiseChain", ("X", "noise_scale", "seed", "scale", "shift", "R"), ("Y",),
             {"steps": Required("ints"), "sigma_add": Required("floats"), "sigma_mul": Required("floats"),
              "streams": Required("ints")},
             {"steps": Interval(min(ChainStep), max(ChainStep)), "sigma_add": FINITE_NON_NEGATIVE,
              "sigma_mul": FINITE_NON_NEGATIVE, "streams": STREAM},
             sigmas=("sigma_add", "sigma_mul"), optional=("scale", "shift", "R"), native_only=True),
    OpSchema("AnalogTile", ("X", "W", "noise_scale", "seed"), ("Y",),
             _TILE_ATTRIBUTES, _TILE_INTERVALS, sigmas=_TILE_SIGMAS, product=True,
             cases={"aihwkit-default": {"inp_bits": 7, "out_noise": 0.06, "out_bits": 9, "out_bound": 12.0,
                                        "bm_rounds": 5, "max_input_size": 512, "max_output_size": 512},
                    "tiles, omega, bound management": {"inp_bits": 7, "out_bits": 9, "out_bound": 3.0, "bm_rounds": 4,
                                                       "max_input_size": 13, "max_output_size": 3,
                                                       "weight_scaling_omega": 1.0},
                    "columnwise, noise, no DAC": {"out_noise": 0.1, "out_bound": 2.0, "bm_rounds": 3,
                                                  "max_input_size": 40, "weight_scaling_omega": 0.6,
                                                  "weight_scaling_columnwise": 1, "stream": 5},
                    "unmanaged": {"noise_management": 0, "inp_bits": 5, "inp_bound": 4.0},
                    "weight noise, tiles, bound management": {"inp_bits": 7, "out_noise": 0.02, "w_noise": 0.05,
                                                              "out_bits": 9, "out_bound": 3.0, "bm_rounds": 3,
                                                              "max_input_size": 13, "max_output_size": 3,
                                                              "weight_scaling_omega": 0.8, "stream": 4},
                    "weight noise only, unmanaged": {"noise_management": 0, "w_noise": 0.1, "inp_bound": 4.0}},
             benchmarked=("aihwkit-default",)),
    OpSchema("AnalogTileEpilogue", ("X", "W", "noise_scale", "seed", "scale", "shift"), ("Y",),
             {**_TILE_ATTRIBUTES, "relu": 0, **_STORED_WEIGHTS},
             {**_TILE_INTERVALS, **_EPILOGUE, **_STORED_WEIGHTS_INTERVALS}, sigmas=_TILE_SIGMAS,
             optional=("W", "scale", "shift"), native_only=True, product=True),
    OpSchema("AnalogTileConv", ("X", "W", "noise_scale", "seed", "scale", "shift", "R"), ("Y",),
             {**_TILE_ATTRIBUTES, "pads": (0, 0, 0, 0), "strides": (1, 1), "dilations": (1, 1), "relu": 0},
             {**_TILE_INTERVALS, "pads": PADDING, "strides": GEOMETRY, "dilations": GEOMETRY, **_EPILOGUE},
             sigmas=_TILE_SIGMAS, optional=("R",), native_only=True, product=True),
    OpSchema("StoredWeights", ("after",), ("W",), _STORED_WEIGHTS, _STORED_WEIGHTS_INTERVALS, optional=("after",),
             native_only=True),
)
SCHEMAS = {op.name: op for op in OPS}
