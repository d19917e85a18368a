"""Pass: make the model self-contained: import ``ai.analog`` and add our model-local functions.

Rule: every function body (public ops and their helpers) is added, importing the model's own
default-domain opset, so any onnxruntime runs the file without our native library. Functions of
our domain the model already holds (an export whose QAT activations beyond 8 bits use
``Quantize`` carries them) are replaced: the domain is ours, and one definition, the current
one, serves every node.
"""

from __future__ import annotations

import onnx_ir as ir

from analog_onnx.ops import DOMAIN, OPSET_VERSION
from analog_onnx.ops.functions import function_protos


class AddAnalogFunctionsPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        opset = model.opset_imports[""]
        model.opset_imports[DOMAIN] = OPSET_VERSION
        for identifier in [key for key in model.functions if key[0] == DOMAIN]:
            del model.functions[identifier]
        for proto in function_protos(opset):
            function = ir.serde.deserialize_function(proto)
            model.functions[function.identifier()] = function
        return ir.passes.PassResult(model, modified=True)
