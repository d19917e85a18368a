"""Small helpers shared by the passes: metadata keys, control inputs, streams, making our nodes
and splicing them into a graph."""

from __future__ import annotations

import json
from collections.abc import Collection

import onnx_ir as ir

from analog_onnx.config import AnalogConfig
from analog_onnx.ops import DOMAIN
from analog_onnx.passes.name_nodes import unnamed_or_shared
from analog_onnx.passes.names import Names

ROLE_KEY = "analog_onnx.role"  # node metadata: what an inserted node is for (strip reads it)
REPLACES_KEY = "analog_onnx.replaces"  # node metadata: the name of the layer a tile chain replaces
LAYER_KEY = "analog_onnx.layer"  # node metadata of a tile: the site name of the layer it computes
NODE_KEYS = (ROLE_KEY, REPLACES_KEY, LAYER_KEY)  # the node metadata only the transform writes
QUANTIZER_KEY = "analog_onnx.quantizer"  # node metadata: the QONNX quantizer a converted node computes part of

# model metadata the transform writes (see write_metadata.py and add_controls.py)
CONFIG_KEY = "analog_onnx.config"
VERSION_KEY = "analog_onnx.version"
INPUTS_KEY = "analog_onnx.inputs"  # JSON {control: graph input name}
SITES_KEY = "analog_onnx.sites"
METADATA_KEYS = (CONFIG_KEY, VERSION_KEY, INPUTS_KEY, SITES_KEY)


def control_names(model: ir.Model) -> dict[str, str]:
    """{control: graph input name} as the controls pass recorded it ({} before it ran)."""
    return json.loads(model.metadata_props.get(INPUTS_KEY, "{}"))


def control_inputs(model: ir.Model, wanted: tuple[str, ...]) -> list[ir.Value]:
    """The graph inputs of the ``wanted`` controls, looked up by the names the controls pass chose."""
    names = control_names(model)
    inputs = {v.name: v for v in model.graph.inputs}
    missing = [c for c in wanted if names.get(c) not in inputs]
    if missing:
        raise ir.passes.PreconditionError(f"control input(s) {', '.join(missing)} missing: "
                                          "run AddControlInputsPass first")
    return [inputs[names[c]] for c in wanted]


class EffectPass(ir.passes.InPlacePass):
    """A pass that places one effect of ``config`` at its sites (only those named in ``only``, when
    given); it requires the control inputs named in ``controls``."""

    controls: tuple[str, ...] = ()

    def __init__(self, config: AnalogConfig, only: Collection[str] | None = None) -> None:
        super().__init__()
        self.config, self.only = config, only

    def requires(self, model: ir.Model) -> None:
        control_inputs(model, self.controls)
        node = unnamed_or_shared(model.graph)
        if node is not None:
            raise ir.passes.PreconditionError(f"{node.op_type} node {node.name!r} has no name of its own: "
                                              "run NameNodesPass first")


def next_stream(graph: ir.Graph) -> int:
    """The first noise stream no op of ours in ``graph`` uses yet: streams count up in the order
    the ops are placed, so each op draws its own numbers and the same model gets the same ones."""
    used = [node.attributes["stream"].as_int() for node in graph
            if node.domain == DOMAIN and "stream" in node.attributes]
    return max(used, default=0) + 1


def is_inserted(node: ir.Node) -> bool:
    """Whether the transform put ``node`` in the graph: ours, or tagged with a role."""
    return node.domain == DOMAIN or ROLE_KEY in node.metadata_props


def upstream(value: ir.Value) -> ir.Value:
    """Walk back through inserted nodes (their first inputs) to the original value."""
    while value.producer() is not None and is_inserted(value.producer()) and value.producer().inputs:
        value = value.producer().inputs[0]
    return value


def tag(node: ir.Node, role: str) -> ir.Node:
    node.metadata_props[ROLE_KEY] = role
    return node


def analog_node(op_type: str, inputs: list[ir.Value | None], attributes: dict, *, name: str, role: str,
                num_outputs: int = 1) -> ir.Node:
    node = ir.node(op_type, inputs, attributes, domain=DOMAIN, name=name, num_outputs=num_outputs)
    return tag(node, role)


def take_over(old: ir.Value, new: ir.Value, *, take_name: bool = False) -> bool:
    """Every consumer of ``old``, graph outputs included, reads ``new``; a graph output keeps its
    name (``new`` takes it and ``old`` is left unnamed), as does every value with ``take_name``.
    Returns whether ``old`` was a graph output."""
    was_output = old.is_graph_output()
    old.replace_all_uses_with(new, replace_graph_outputs=True)
    if was_output or take_name:
        name, old.name = old.name, None
        new.name = name
    return was_output


def splice_after(graph: ir.Graph, value: ir.Value, node: ir.Node, names: Names) -> None:
    """Make every consumer of ``value`` (graph outputs included) read ``node``'s first output instead.

    A graph output keeps its name: the new value takes it, the original is renamed after ``node``.
    A graph input keeps its name too: when it is also a graph output, that output stays the input.
    """
    new = node.outputs[0]
    if value in graph.inputs:  # a network input that is also an output: it stays both, unchanged
        for user, index in list(value.uses()):
            user.replace_input_with(index, new)
        new.name = names.value(f"{value.name}_analog")
    elif take_over(value, new):
        value.name = names.value(f"{node.name}/input")
    else:
        new.name = names.value(f"{value.name}_analog")
    node.replace_input_with(0, value)
    new.type, new.shape = value.type, value.shape
    producer = value.producer()
    if producer is not None and producer.graph is graph:
        graph.insert_after(producer, node)
    else:
        graph.insert_before(graph.node(0), node) if len(graph) else graph.append(node)
