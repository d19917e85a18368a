"""Pass: undo the transform, giving back the original graph.

Rule: each effect first undoes what removing its nodes does not (``Effect.restore``: the
periphery gives a layer its bias back, a tile chain's consumers read the layer it replaced);
then every node the transform inserted (domain ``ai.analog``, or tagged with a role) is removed
and its consumers read its input again; the control inputs, our functions, our opset import and
our metadata go away.
"""

from __future__ import annotations

import onnx_ir as ir

from analog_onnx import effects
from analog_onnx.ops import DOMAIN
from analog_onnx.passes.common import METADATA_KEYS, control_names, is_inserted, take_over


class StripAnalogPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        inserted = [n for n in graph if is_inserted(n)]
        for effect in effects.EFFECTS:
            effect.undo(graph, inserted)
        for node in inserted:  # its consumers read its first input again (a Constant has none)
            if node.inputs:
                take_over(node.outputs[0], node.inputs[0])
        graph.remove(inserted, safe=True)
        self._remove_controls(model)
        for key in [k for k in model.functions if k[0] == DOMAIN]:
            del model.functions[key]
        model.opset_imports.pop(DOMAIN, None)
        for key in METADATA_KEYS:
            model.metadata_props.pop(key, None)
        return ir.passes.PassResult(model, modified=bool(inserted))

    @staticmethod
    def _remove_controls(model: ir.Model) -> None:
        graph = model.graph
        names = set(control_names(model).values())
        for value in [v for v in graph.inputs if v.name in names]:
            graph.inputs.remove(value)
            graph.initializers.pop(value.name, None)
