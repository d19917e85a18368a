"""Pass: undo the transform, giving back the original graph.

Rule: every node the transform inserted (domain ``ai.analog``, or tagged with a role) is
removed and its consumers read its input again; a bias the transform moved out of a layer goes
back into it; the control inputs, our functions, our opset import and our metadata go away.

The pass is linear in the size of the graph (one index of the values original nodes produce), and
metadata that names a value the graph does not have (an edited file) is a ``ModelError``.
"""

from __future__ import annotations

import onnx_ir as ir

from analog_onnx.errors import ModelError
from analog_onnx.ops import DOMAIN
from analog_onnx.passes.common import METADATA_KEYS, REPLACES_KEY, ROLE_KEY, control_names
from analog_onnx.passes.insert_mvm_periphery import BIAS_INPUT


def is_inserted(node: ir.Node) -> bool:
    return node.domain == DOMAIN or ROLE_KEY in node.metadata_props


def _upstream(value: ir.Value) -> ir.Value:
    """Walk back through inserted nodes to the original value."""
    while value.producer() is not None and is_inserted(value.producer()) and value.producer().inputs:
        value = value.producer().inputs[0]
    return value


class StripAnalogPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        inserted = [n for n in graph if is_inserted(n)]
        original = {v.name: v for n in graph if not is_inserted(n) for v in n.outputs if v.name}
        for node in inserted:
            if REPLACES_KEY in node.metadata_props:
                self._restore_layer(graph, node, original)
            if node.metadata_props.get(ROLE_KEY) == "bias" and node.op_type == "Add":
                self._restore_bias(graph, node)
        for node in inserted:
            self._bypass(graph, node)
        graph.remove(inserted, safe=True)
        self._remove_controls(model)
        for key in [k for k in model.functions if k[0] == DOMAIN]:
            del model.functions[key]
        model.opset_imports.pop(DOMAIN, None)
        for key in METADATA_KEYS:
            model.metadata_props.pop(key, None)
        return ir.passes.PassResult(model, modified=bool(inserted))

    @staticmethod
    def _restore_bias(graph: ir.Graph, add: ir.Node) -> None:
        """Give the layer under a bias Add its original bias input back."""
        layer = _upstream(add.inputs[0]).producer()
        if layer is not None and layer.op_type in BIAS_INPUT and not is_inserted(layer):
            index = BIAS_INPUT[layer.op_type]
            if len(layer.inputs) <= index or layer.inputs[index] is not None:
                raise ModelError(f"node {add.name!r} is marked as the bias of {layer.name!r}, which has no free bias "
                                 "input: the file was edited; transform the original model again")
            layer.replace_input_with(index, _upstream(add.inputs[1]))

    @staticmethod
    def _restore_layer(graph: ir.Graph, last: ir.Node, original: dict[str, ir.Value]) -> None:
        """Consumers of a tile chain read the layer it replaced again (see insert_analog_tile)."""
        name = last.metadata_props[REPLACES_KEY]
        layer_output = original.get(name)
        if layer_output is None:
            raise ModelError(f"node {last.name!r} says it replaces {name!r} ({REPLACES_KEY}), which no original "
                             "node of the graph computes: the file was edited; transform the original model again")
        output = last.outputs[0]
        was_output = output in graph.outputs
        output.replace_all_uses_with(layer_output, replace_graph_outputs=True)
        if was_output:
            output_name, output.name = output.name, None
            layer_output.name = output_name

    @staticmethod
    def _bypass(graph: ir.Graph, node: ir.Node) -> None:
        """Consumers of the node's first output read its first input again (a Constant has none)."""
        if not node.inputs:
            return
        output, source = node.outputs[0], node.inputs[0]
        was_output = output in graph.outputs
        output.replace_all_uses_with(source, replace_graph_outputs=True)
        if was_output:
            name, output.name = output.name, None
            source.name = name

    @staticmethod
    def _remove_controls(model: ir.Model) -> None:
        graph = model.graph
        names = set(control_names(model).values())
        for value in [v for v in graph.inputs if v.name in names]:
            graph.inputs.remove(value)
            graph.initializers.pop(value.name, None)
