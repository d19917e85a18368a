"""Pass: every node of the main graph gets a name of its own, so passes can find layers by name.

The passes name a layer's site, its inserted ops (``SITE/analog_...``) and the tile that
computes it (``analog_onnx.layer``) after the layer's node; an empty or shared name would let
one layer's ops land on another's (a tile pass that renames an unnamed layer's output would
hide it from the device pass; two layers named alike chained their weights). Rule, in graph order:

1. A named node whose name no earlier node has keeps it.
2. An unnamed node is named after its first output (the name its site always had), or its op type.
3. A name already taken gets the first free ``name_1``, ``name_2``, ... (see names.py).
"""

from __future__ import annotations

import onnx_ir as ir

from analog_onnx.passes.names import Names


def unnamed_or_shared(graph: ir.Graph) -> ir.Node | None:
    """The first node of ``graph`` whose name is empty or an earlier node's, or None."""
    seen: set[str] = set()
    for node in graph:
        if not node.name or node.name in seen:
            return node
        seen.add(node.name)
    return None


class NameNodesPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        names, seen, modified = Names(model), set(), False
        for node in model.graph:
            if not node.name or node.name in seen:
                output = node.outputs[0].name if node.outputs else None
                node.name, modified = names.node(node.name or output or node.op_type), True
            seen.add(node.name)
        return ir.passes.PassResult(model, modified=modified)
