"""Pass: add the control inputs that the analog ops read, one per lifetime of a random draw.

Rule:

1. Four scalar graph inputs with initializer defaults, so a plain onnxruntime session runs the
   model unchanged while a sweep feeds other values through one session:
   ``noise_scale`` (float32, 1.0: multiplies every sigma), ``seed`` (int64, -1: fresh draws per
   run, for per-read noise), ``chip_seed`` (int64, -1: a fresh chip per run, for per-chip draws)
   and ``t_inference`` (float32 seconds since programming, default from the config).
2. Each takes its control's name, or the first free ``name_1``, ``name_2``, ... (see names.py).
3. ``analog_onnx.inputs`` in the model metadata maps each control to its input's name; the
   passes that place ops look their controls up there.
"""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir

from analog_onnx.passes.common import INPUTS_KEY
from analog_onnx.passes.names import Names

CONTROLS = ("noise_scale", "seed", "chip_seed", "t_inference")


class AddControlInputsPass(ir.passes.InPlacePass):
    def __init__(self, t_inference: float = 0.0) -> None:
        super().__init__()
        self.t_inference = t_inference

    def requires(self, model: ir.Model) -> None:
        if INPUTS_KEY in model.metadata_props:
            raise ir.passes.PreconditionError("the model already has analog control inputs")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph, names = model.graph, Names(model)
        defaults = {"noise_scale": np.array(1.0, np.float32), "seed": np.array(-1, np.int64),
                    "chip_seed": np.array(-1, np.int64), "t_inference": np.array(self.t_inference, np.float32)}
        chosen = {}
        for control in CONTROLS:
            tensor = ir.tensor(defaults[control], name=names.value(control))
            value = ir.Value(name=tensor.name, const_value=tensor, shape=ir.Shape([]),
                             type=ir.TensorType(tensor.dtype))
            graph.inputs.append(value)
            graph.register_initializer(value)
            chosen[control] = value.name
        model.metadata_props[INPUTS_KEY] = json.dumps(chosen)
        return ir.passes.PassResult(model, modified=True)
