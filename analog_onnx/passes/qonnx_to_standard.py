"""Pass: turn QONNX quantizers (as Brevitas exports them) into standard ONNX with the same arithmetic.

Rule, for ``Quant`` (also named ``IntQuant``), ``BipolarQuant`` and ``Trunc`` nodes of the domains
``qonnx.custom_op.general`` and ``finn.custom_op.general``, whose inputs other than X are constants:

1. X constant too (a quantized weight): the node is folded into an initializer, computed with
   the same float32 arithmetic as in case 3, so weights stay plain constants the transform finds.
2. ``Quant`` with a scalar scale > 0, zero point 0, 8 bits, not narrow, rounding ROUND: a
   QuantizeLinear/DequantizeLinear pair to int8 (signed) or uint8; QuantizeLinear divides,
   rounds half to even and saturates at the same integer bounds.
3. Any other ``Quant``: QONNX's definition op by op, Div, Add zero point, Clip to the integer
   range, Round/Ceil/Floor, Sub zero point, Mul; 1-bit signed is the sign (as QONNX runs it).
   Every node made of one quantizer carries ``analog_onnx.quantizer`` (its name), so the
   activation-noise placement (passes/sites.py) knows where that quantizer ends.
4. ``BipolarQuant``: +1 where X >= 0, else -1, times the scale.
5. ``Trunc``: round(X/scale + zero point), divided by the truncation scale (version 1:
   2**(in_bits - out_bits); version 2, six inputs: the power of two nearest out_scale/scale,
   then clamped to the output range), rounded with the mode, minus the zero point (over the
   truncation scale in version 2), times the output scale.

A quantizer with a non-constant parameter or an unknown rounding mode is a ModelError. The
QONNX opset imports are dropped once no node uses them. Requires default opset 13 or newer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx_ir as ir

from analog_onnx.errors import ModelError
from analog_onnx.passes.common import QUANTIZER_KEY

DOMAINS = ("qonnx.custom_op.general", "finn.custom_op.general")
QUANTIZERS = ("Quant", "IntQuant", "BipolarQuant", "Trunc")
ROUNDING = {"ROUND": "Round", "CEIL": "Ceil", "FLOOR": "Floor"}
F32 = np.float32


def int_range(bits: int, signed: bool, narrow: bool) -> tuple[int, int]:
    """The integer range of QONNX's quantizers: narrow drops the lowest signed (highest unsigned) level."""
    if signed:
        return -(1 << (bits - 1)) + int(narrow), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1 - int(narrow)


class _Numpy:
    """Runs the arithmetic on constant arrays (folding); float32 in, float32 out, as ONNX does."""

    def const(self, value: Any) -> np.ndarray:
        return np.asarray(value, dtype=F32)

    def op(self, op_type: str, *args: np.ndarray) -> np.ndarray:
        functions: dict[str, Callable[..., np.ndarray]] = {
            "Div": np.divide, "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Round": np.round,
            "Ceil": np.ceil, "Floor": np.floor, "Clip": np.clip, "Sign": lambda x: np.where(x >= 0, F32(1), F32(-1))}
        return np.asarray(functions[op_type](*args), dtype=F32)


class _Emitter:
    """Emits the arithmetic as standard nodes before ``node``, constants as initializers."""

    def __init__(self, node: ir.Node) -> None:
        self.tape = ir.tape.Tape()  # nodes and initializers are added to the graph by the caller
        self.prefix = node.outputs[0].name or node.name or node.op_type  # output names are unique

    def const(self, value: Any) -> ir.Value:
        return self.tape.initializer(ir.tensor(np.asarray(value, dtype=F32)),
                                     name=f"{self.prefix}/c{len(self.tape.initializers)}")

    def op(self, op_type: str, *args: ir.Value) -> ir.Value:
        name = f"{self.prefix}/{op_type}{len(self.tape.nodes)}"
        if op_type == "Sign":  # QONNX's sign: >= 0 gives +1, so not ONNX Sign (which gives 0 at 0)
            positive = self.tape.op("GreaterOrEqual", [args[0], self.const(0.0)], name=f"{name}/ge")
            return self.tape.op("Where", [positive, self.const(1.0), self.const(-1.0)], name=name)
        return self.tape.op(op_type, list(args), name=name)


def _rounding(node: ir.Node, default: str) -> str:
    attribute = node.attributes.get("rounding_mode")
    mode = (attribute.as_string() if attribute is not None else default).upper()
    if mode not in ROUNDING:
        raise ModelError(f"QONNX node {node.name!r}: rounding mode {mode} is not supported "
                         f"(supported: {', '.join(ROUNDING)})")
    return ROUNDING[mode]


def _flag(node: ir.Node, name: str, default: int) -> bool:
    attribute = node.attributes.get(name)
    return bool(attribute.as_int() if attribute is not None else default)


def _bits(value: np.ndarray, node: ir.Node) -> int:
    if value.size != 1 or float(value) != int(value) or int(value) < 1:
        raise ModelError(f"QONNX node {node.name!r}: bit width must be one positive integer, got {value.tolist()}")
    return int(value)


def _arithmetic(node: ir.Node, params: list[np.ndarray], x: Any, ops: _Numpy | _Emitter) -> Any:
    """The node's output from input ``x`` in the interpreter ``ops`` (cases 3-5 of the rule)."""
    if node.op_type == "BipolarQuant":
        return ops.op("Mul", ops.op("Sign", x), ops.const(params[0]))
    scale, zeropt = params[0], params[1]
    if node.op_type in ("Quant", "IntQuant"):
        bits, signed = _bits(params[2], node), _flag(node, "signed", 1)
        y = ops.op("Add", ops.op("Div", x, ops.const(scale)), ops.const(zeropt))
        if bits == 1 and signed:
            y = ops.op("Sign", y)
        else:
            low, high = int_range(bits, signed, _flag(node, "narrow", 0))
            y = ops.op(_rounding(node, "ROUND"), ops.op("Clip", y, ops.const(low), ops.const(high)))
        return ops.op("Mul", ops.op("Sub", y, ops.const(zeropt)), ops.const(scale))
    # Trunc
    y = ops.op("Round", ops.op("Add", ops.op("Div", x, ops.const(scale)), ops.const(zeropt)))
    if len(params) == 5:  # version 2: scale, zeropt, in_bitwidth, out_scale, out_bitwidth
        out_scale = params[3]
        trunc_scale = F32(2.0) ** np.round(np.log2(np.asarray(out_scale, F32) / np.asarray(scale, F32)))
        low, high = int_range(_bits(params[4], node), _flag(node, "signed", 1), _flag(node, "narrow", 0))
        y = ops.op("Clip", ops.op("Div", y, ops.const(trunc_scale)), ops.const(low), ops.const(high))
        y = ops.op(_rounding(node, "FLOOR"), y)
        return ops.op("Mul", ops.op("Sub", y, ops.const(np.asarray(zeropt, F32) / trunc_scale)), ops.const(out_scale))
    trunc_scale = F32(2.0) ** F32(_bits(params[2], node) - _bits(params[3], node))
    y = ops.op(_rounding(node, "FLOOR"), ops.op("Div", y, ops.const(trunc_scale)))
    return ops.op("Mul", ops.op("Sub", y, ops.const(zeropt)), ops.const(scale))


def _qdq_dtype(node: ir.Node, params: list[np.ndarray]) -> ir.DataType | None:
    """int8/uint8 when QuantizeLinear/DequantizeLinear compute exactly what the Quant node does (case 2)."""
    if node.op_type not in ("Quant", "IntQuant") or params[0].size != 1 or not float(params[0]) > 0:
        return None
    if np.any(params[1] != 0) or _bits(params[2], node) != 8 or _flag(node, "narrow", 0):
        return None
    if _rounding(node, "ROUND") != "Round":
        return None
    return ir.DataType.INT8 if _flag(node, "signed", 1) else ir.DataType.UINT8


def _constant(value: ir.Value | None) -> np.ndarray | None:
    if value is None:
        return None
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None else tensor.numpy()


class QonnxToStandardPass(ir.passes.InPlacePass):
    def requires(self, model: ir.Model) -> None:
        if any(n.domain in DOMAINS and n.op_type in QUANTIZERS for n in model.graph) and \
                model.opset_imports.get("", 0) < 13:
            raise ir.passes.PreconditionError("QONNX conversion needs default opset 13 or newer")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        targets = [n for n in graph if n.domain in DOMAINS and n.op_type in QUANTIZERS]
        for node in targets:
            self._replace(graph, node)
        used = {n.domain for n in ir.traversal.RecursiveGraphIterator(graph)}
        for domain in set(DOMAINS) & set(model.opset_imports) - used:
            del model.opset_imports[domain]
        return ir.passes.PassResult(model, modified=bool(targets))

    def _replace(self, graph: ir.Graph, node: ir.Node) -> None:
        params = [_constant(v) for v in node.inputs[1:]]
        if any(p is None for p in params):
            raise ModelError(f"QONNX node {node.name!r} ({node.op_type}): scale, zero point and bit widths "
                             "must be constants to convert it to standard ONNX")
        output, x = node.outputs[0], _constant(node.inputs[0])
        if x is not None:
            name, output.name = output.name, None
            new = ir.Value(name=name, type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(x.shape),
                           const_value=ir.tensor(_arithmetic(node, params, np.asarray(x, F32), _Numpy()), name=name))
            graph.register_initializer(new)
            new_nodes: list[ir.Node] = []
        else:
            emitter = _Emitter(node)
            dtype = _qdq_dtype(node, params)
            if dtype is not None:
                zero = emitter.tape.initializer(ir.tensor(np.zeros((), dtype.numpy())), name=f"{emitter.prefix}/zero")
                scale = emitter.const(params[0].reshape(()))
                quantized = emitter.tape.op("QuantizeLinear", [node.inputs[0], scale, zero],
                                            name=f"{emitter.prefix}/quantize")
                new = emitter.tape.op("DequantizeLinear", [quantized, scale, zero], name=f"{emitter.prefix}/dequantize")
            else:
                new = _arithmetic(node, params, node.inputs[0], emitter)
            for initializer in emitter.tape.initializers:
                graph.register_initializer(initializer)
            new_nodes = list(emitter.tape.nodes)
            for made in new_nodes:  # one quantizer still: the activation-noise placement looks past all of it
                made.metadata_props[QUANTIZER_KEY] = emitter.prefix
            new.type, new.shape = output.type, output.shape
        orphans = [v for v in node.inputs if v is not None and v.is_initializer() and len(v.uses()) == 1
                   and not v.is_graph_input()]
        ir.convenience.replace_nodes_and_values(graph, node, [node], new_nodes, [output], [new])
        for value in orphans:  # the raw weight and the parameters, now read by nothing
            if not value.uses():
                graph.initializers.pop(value.name)
