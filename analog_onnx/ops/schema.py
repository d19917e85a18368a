"""The op set, declared once: what every implementation, benchmark and conformance test reads.

Each ``OpSchema`` gives an op's inputs and outputs (names as the function bodies use them), its
attributes with their defaults (``REQUIRED`` for none), which attributes are noise sigmas (a
case with all of them 0 is deterministic), whether it exists only in the native library, and
named example ``cases`` (attribute sets): the configurations the presets emit (``benchmarked``)
and the corners worth testing. The four implementations are found by name: ``functions.<Name>`` (ONNX function
body), ``reference.<snake_name>`` (numpy), ``torch_twins.<snake_name>`` and the native kernel
registered as ``<Name>``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

REQUIRED = None  # an attribute without a default


@dataclass(frozen=True)
class OpSchema:
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attributes: dict[str, int | float | tuple[int, ...] | tuple[float, ...] | None]  # name -> default (REQUIRED: none)
    sigmas: tuple[str, ...] = ()  # attributes that are noise sigmas (times the noise_scale input)
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
                    "weight_scaling_omega": 0.0, "weight_scaling_columnwise": 0, "stream": 0}
_MVM_OUTPUT_ATTRIBUTES = {"weight_scale": 1.0, "out_noise": 0.0, "out_bits": 0, "out_bound": math.inf, "axis": 1,
                          "stream": 0}

OPS: tuple[OpSchema, ...] = (
    OpSchema("Noise", ("X", "noise_scale", "seed"), ("Y",),
             {"sigma_add": 0.0, "sigma_mul": 0.0, "relative": 0, "stream": 0}, sigmas=("sigma_add", "sigma_mul"),
             cases={"additive": {"sigma_add": 1.0},
                    "add + mul": {"sigma_add": 0.1, "sigma_mul": 0.1},
                    "multiplicative": {"sigma_mul": 0.2, "stream": 2},
                    "relative, both": {"sigma_add": 0.3, "sigma_mul": 0.2, "relative": 1, "stream": 9},
                    "relative": {"sigma_add": 0.3, "relative": 1, "stream": 3}},
             benchmarked=("additive", "add + mul")),
    OpSchema("Quantize", ("X",), ("Y",), {"bits": REQUIRED, "bound": 1.0, "signed": 1, "dynamic": 0, "axis": 0},
             cases={"dynamic": {"bits": 8, "dynamic": 1, "axis": 1},
                    "4-bit": {"bits": 4},
                    "unsigned": {"bits": 8, "bound": 2.5, "signed": 0},
                    "per vector": {"bits": 3, "dynamic": 1, "axis": -1},
                    "per tensor": {"bits": 7, "dynamic": 1, "axis": 0},
                    "axis 2": {"bits": 5, "dynamic": 1, "axis": 2}},
             benchmarked=("dynamic",)),
    OpSchema("MvmInput", ("X",), ("Xn", "S"), {"inp_bits": 0, "inp_bound": 1.0, "noise_management": 1, "axis": 1},
             cases={"7-bit DAC": {"inp_bits": 7},
                    "unmanaged": {"inp_bits": 0, "inp_bound": 0.5, "noise_management": 0, "axis": -1},
                    "per vector": {"inp_bits": 5, "inp_bound": 0.8, "axis": -1}},
             benchmarked=("7-bit DAC",)),
    OpSchema("MvmOutput", ("Y", "S", "noise_scale", "seed"), ("Z",), _MVM_OUTPUT_ATTRIBUTES, sigmas=("out_noise",),
             cases={"noise, 9-bit ADC": {"out_noise": 0.06, "out_bits": 9, "out_bound": 12.0, "weight_scale": 0.5},
                    "9-bit ADC": {"weight_scale": 0.37, "out_bits": 9, "out_bound": 12.0},
                    "clip only": {"weight_scale": 1.5, "out_bound": 2.0, "axis": -1},
                    "plain": {},
                    "noise per vector": {"out_noise": 0.1, "out_bound": 3.0, "axis": -1, "stream": 2}},
             benchmarked=("noise, 9-bit ADC",)),
    OpSchema("DeviceWeights", ("W", "noise_scale", "seed", "chip_seed", "t_inference"), ("W_read", "alpha"),
             {"device": 1, "g_max": 25.0, "prog_noise_scale": 1.0, "drift": 1, "drift_scale": 1.0, "read_noise": 1,
              "read_noise_scale": 1.0, "drift_compensation": 1, "stuck_at_zero": 0.0, "stuck_at_gmax": 0.0,
              "prog_noise_add": 0.0, "prog_noise_rel": 0.0, "drift_nu": 0.0, "drift_nu_std": 0.0,
              "read_noise_rel": 0.0, "bits": 0, "per_channel": 0, "stream": 0},
             sigmas=("prog_noise_scale", "drift_scale", "read_noise_scale", "stuck_at_zero", "stuck_at_gmax"),
             cases={"pcm": {},
                    "pcm per channel, 4-bit, stuck": {"per_channel": 1, "bits": 4, "stuck_at_zero": 0.05,
                                                      "stuck_at_gmax": 0.02, "stream": 3},
                    "reram": {"device": 2, "g_max": 40.0, "read_noise": 0, "stream": 1},
                    "generic": {"device": 3, "prog_noise_add": 0.01, "prog_noise_rel": 0.05, "drift_nu": 0.05,
                                "drift_nu_std": 0.02, "read_noise_rel": 0.02, "stream": 7},
                    "levels only": {"prog_noise_scale": 0.0, "drift": 0, "read_noise": 0, "drift_compensation": 0,
                                    "bits": 5, "per_channel": 1}},
             benchmarked=("pcm",)),
    OpSchema("MvmOutputEpilogue", ("Y", "S", "noise_scale", "seed", "scale", "shift"), ("Z",),
             {**_MVM_OUTPUT_ATTRIBUTES, "relu": 0}, sigmas=("out_noise",), native_only=True),
    OpSchema("NoiseChain", ("X", "noise_scale", "seed", "scale", "shift", "R"), ("Y",),
             {"steps": REQUIRED, "sigma_add": REQUIRED, "sigma_mul": REQUIRED, "streams": REQUIRED},
             sigmas=("sigma_add", "sigma_mul"), native_only=True),
    OpSchema("AnalogTile", ("X", "W", "noise_scale", "seed"), ("Y",),
             _TILE_ATTRIBUTES, sigmas=("out_noise",), product=True,
             cases={"aihwkit-default": {"inp_bits": 7, "out_noise": 0.06, "out_bits": 9, "out_bound": 12.0,
                                        "bm_rounds": 5, "max_input_size": 512, "max_output_size": 512},
                    "tiles, omega, bound management": {"inp_bits": 7, "out_bits": 9, "out_bound": 3.0, "bm_rounds": 4,
                                                       "max_input_size": 13, "max_output_size": 3,
                                                       "weight_scaling_omega": 1.0},
                    "columnwise, noise, no DAC": {"out_noise": 0.1, "out_bound": 2.0, "bm_rounds": 3,
                                                  "max_input_size": 40, "weight_scaling_omega": 0.6,
                                                  "weight_scaling_columnwise": 1, "stream": 5},
                    "unmanaged": {"noise_management": 0, "inp_bits": 5, "inp_bound": 4.0}},
             benchmarked=("aihwkit-default",)),
    OpSchema("AnalogTileEpilogue", ("X", "W", "noise_scale", "seed", "scale", "shift"), ("Y",),
             {**_TILE_ATTRIBUTES, "relu": 0}, sigmas=("out_noise",), native_only=True, product=True),
    OpSchema("AnalogTileConv", ("X", "W", "noise_scale", "seed", "scale", "shift"), ("Y",),
             {**_TILE_ATTRIBUTES, "pads": (0, 0, 0, 0), "strides": (1, 1), "dilations": (1, 1), "relu": 0},
             sigmas=("out_noise",), native_only=True, product=True),
)
SCHEMAS = {op.name: op for op in OPS}
