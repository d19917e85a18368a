"""Free names for everything the transform adds.

ONNX wants every value name defined once in the whole model (subgraphs of If/Loop/Scan see the
names of the graphs around them) and onnxruntime wants distinct node names, so a name we add
must be free in the whole model, not just in the top-level graph. Every pass asks one
``Names`` made from the model it is changing; the first choice is the plain ``base`` (so a
model without clashes gets the names it always got), then ``base_1``, ``base_2``, ...
"""

from __future__ import annotations

import onnx_ir as ir


class Names:
    """The value and node names a model uses, and free ones on request (each handed out once)."""

    def __init__(self, model: ir.Model) -> None:
        self.values: set[str] = set()
        self.nodes: set[str] = set()
        graphs = [model.graph]
        for node in ir.traversal.RecursiveGraphIterator(model.graph, enter_graph=graphs.append):
            self.nodes.add(node.name or "")
            self.values.update(v.name or "" for v in (*node.inputs, *node.outputs) if v is not None)
        for graph in graphs:
            self.values.update(v.name or "" for v in (*graph.inputs, *graph.outputs))
            self.values.update(graph.initializers)

    def value(self, base: str) -> str:
        """A value name no graph of the model uses."""
        return _claim(self.values, base)

    def node(self, base: str) -> str:
        """A node name no graph of the model uses."""
        return _claim(self.nodes, base)


def _claim(taken: set[str], base: str) -> str:
    name, i = base, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name
