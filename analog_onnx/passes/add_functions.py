"""Pass: make the model self-contained: import ``ai.analog`` and add our model-local functions.

Rule: every function body (public ops and their helpers) is added, importing the model's own
default-domain opset, so any onnxruntime runs the file without our native library. The model
must not define a function of the same identifier already.
"""

from __future__ import annotations

import onnx_ir as ir

from analog_onnx.ops import DOMAIN, OPSET_VERSION
from analog_onnx.ops.functions import function_protos


class AddAnalogFunctionsPass(ir.passes.InPlacePass):
    def requires(self, model: ir.Model) -> None:
        taken = [name for domain, name, _ in model.functions if domain == DOMAIN]
        if taken:
            raise ir.passes.PreconditionError(f"the model already defines {DOMAIN} function(s) {', '.join(taken)}")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        opset = model.opset_imports[""]
        model.opset_imports[DOMAIN] = OPSET_VERSION
        for proto in function_protos(opset):
            function = ir.serde.deserialize_function(proto)
            model.functions[function.identifier()] = function
        return ir.passes.PassResult(model, modified=True)
