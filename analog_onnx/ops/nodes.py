"""Every node of our domain held to its op's declaration (``schema.py``) before Python code reads
it: a hand-edited file (an attribute of another kind or out of its interval, an unknown attribute,
an input too few or too many) is one error naming the node, the same rule the native kernels
apply, never a crash in the code that trusted the transform to have written the node."""

from __future__ import annotations

import onnx_ir as ir

from analog_onnx.errors import ModelError
from analog_onnx.ops import DOMAIN
from analog_onnx.ops.schema import SCHEMAS, OpSchema, Required, kind_of

_KINDS = {ir.AttributeType.INT: "int", ir.AttributeType.FLOAT: "float", ir.AttributeType.STRING: "string",
          ir.AttributeType.INTS: "ints", ir.AttributeType.FLOATS: "floats"}
_SAID = {"int": "an integer", "float": "a float", "string": "a string", "ints": "a list of integers",
         "floats": "a list of floats"}


def check_nodes(graph: ir.Graph) -> None:
    """Raise ``ModelError`` for the first node of ``DOMAIN`` in ``graph`` (subgraphs included) that
    its op's schema does not admit."""
    for node in graph.all_nodes():
        problem = _problem(node) if node.domain == DOMAIN else None
        if problem:
            raise ModelError(f"{DOMAIN}.{node.op_type} node {node.name or ''!r}: {problem}")


def _problem(node: ir.Node) -> str | None:
    op = SCHEMAS.get(node.op_type)
    if op is None:
        return f"{DOMAIN} has no op {node.op_type}"
    problems = (_io_problem(node, op), *(_attribute_problem(op, name, attribute)
                                         for name, attribute in node.attributes.items()),
                _required_problem(node, op))
    return next((p for p in problems if p), None)


def _io_problem(node: ir.Node, op: OpSchema) -> str | None:
    if len(node.inputs) > len(op.inputs):
        return f"has {len(node.inputs)} inputs, more than its {len(op.inputs)} ({', '.join(op.inputs)})"
    missing = [name for i, name in enumerate(op.inputs)
               if name not in op.optional and (i >= len(node.inputs) or node.inputs[i] is None)]
    if missing:
        return f"input {missing[0]} is missing"
    if len(node.outputs) != len(op.outputs):
        return f"has {len(node.outputs)} outputs, not {len(op.outputs)} ({', '.join(op.outputs)})"
    return None


def _attribute_problem(op: OpSchema, name: str, attribute: ir.Attr) -> str | None:
    if name not in op.attributes:
        return f"attribute {name} is not one of {op.name}'s"
    default = op.attributes[name]
    want, have = kind_of(default), _KINDS.get(attribute.type)
    empty_list = want in ("ints", "floats") and have in ("ints", "floats") and not attribute.value
    if have != want and not empty_list:
        return f"attribute {name} must be {_SAID[want]}, not {_SAID.get(have, f'of type {attribute.type.name}')}"
    values = attribute.value if want in ("ints", "floats") else [attribute.value]
    if want in ("ints", "floats") and not isinstance(default, Required) and len(values) != len(default):
        return f"attribute {name} must have {len(default)} values, got {len(values)}"
    interval = op.intervals.get(name)
    bad = next((v for v in values if interval is not None and v not in interval), None)  # NaN is in none
    if bad is not None:
        return f"attribute {name} must be {interval.describe(want in ('int', 'ints'))}, got {bad}"
    return None


def _required_problem(node: ir.Node, op: OpSchema) -> str | None:
    missing = [name for name, default in op.attributes.items()
               if isinstance(default, Required) and name not in node.attributes]
    return f"attribute {missing[0]} is required" if missing else None
