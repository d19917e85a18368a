"""Which nodes of a graph the transform touches ("sites"), in graph order.

An *analog layer* is a Conv, ConvTranspose, Gemm or MatMul whose weight is a constant (an
initializer or a Constant, possibly behind a DequantizeLinear) with at least one element (an
empty weight computes nothing); with ``activation_matmul`` a MatMul of two activations counts
too. Placement "mvm" wraps analog layers; placement "activations" perturbs the outputs of every
node whose op type is listed (and the network inputs). Include/exclude regexes, excluded op
types and keep-first/last-digital apply to both. Only the top-level graph is searched:
subgraphs of If/Loop are left intact.

Every pass finds its own sites with ``find_sites``; a layer stays an analog layer after a pass
changed its weight (a quantized weight is still a constant weight), so passes compose in any order.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from analog_onnx.config import ANALOG_OP_TYPES, AnalogConfig
from analog_onnx.effects import weight_roles
from analog_onnx.passes.common import ROLE_KEY

WEIGHT_INPUT = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}


@dataclass
class Site:
    """One place the transform touches: a node (its output gets noise) or a layer to wrap."""

    name: str  # the node's name, its first output's name when it has none, or the input's name
    op_type: str  # "Input" for a network input
    value: ir.Value  # the tensor that gets noise ("activations" placement)
    node: ir.Node | None = None  # None for a network input
    weight: np.ndarray | None = None  # the constant weight of an analog layer, dequantized


def site_name(node: ir.Node) -> str:
    return node.name or node.outputs[0].name or ""


def constant_array(value: ir.Value | None) -> np.ndarray | None:
    """The value as a numpy array if it is a constant (initializer, Constant, or DequantizeLinear of those)."""
    if value is None:
        return None
    if value.const_value is not None:
        return value.const_value.numpy()
    producer = value.producer()
    if producer is None:
        return None
    if producer.op_type == "Constant" and producer.domain == "" and "value" in producer.attributes:
        return producer.attributes["value"].as_tensor().numpy()
    if producer.op_type == "DequantizeLinear" and producer.domain == "":
        return _dequantize(producer)
    return None


def _dequantize(node: ir.Node) -> np.ndarray | None:
    """DequantizeLinear of constants: per tensor, per axis, or per block of ``block_size`` along
    ``axis`` (opset 21: scale and zero point then have the weight's rank)."""
    parts = [constant_array(v) if v is not None else None for v in node.inputs]
    if len(parts) < 2 or parts[0] is None or parts[1] is None:
        return None
    x, scale = parts[0].astype(np.float32), parts[1].astype(np.float32)
    zero = parts[2].astype(np.float32) if len(parts) > 2 and parts[2] is not None else np.float32(0)
    axis = node.attributes["axis"].as_int() if "axis" in node.attributes else 1
    block = node.attributes["block_size"].as_int() if "block_size" in node.attributes else 0
    if block > 0 and x.ndim and scale.ndim == x.ndim:
        def spread(a: np.ndarray) -> np.ndarray:
            return np.repeat(a, block, axis=axis).take(range(x.shape[axis]), axis=axis) if np.ndim(a) else a
        scale, zero = spread(scale), spread(zero)
    elif scale.ndim == 1 and scale.size > 1 and x.ndim:
        shape = [1] * x.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), np.reshape(zero, shape) if np.ndim(zero) else zero
    try:
        return (x - zero) * scale
    except ValueError:  # shapes the checker let through that do not broadcast: not a weight we can read
        return None


def layer_weight(node: ir.Node) -> np.ndarray | None:
    """The constant weight of a layer, looking through the nodes effects put before it."""
    value, roles = node.inputs[WEIGHT_INPUT[node.op_type]], weight_roles()
    while value is not None and (producer := value.producer()) is not None \
            and producer.metadata_props.get(ROLE_KEY) in roles:
        value = producer.inputs[0]
    return constant_array(value)


def is_analog_layer(node: ir.Node, activation_matmul: bool) -> bool:
    if node.domain != "" or node.op_type not in ANALOG_OP_TYPES or ROLE_KEY in node.metadata_props:
        return False  # ours, or a node the transform inserted (a tile's unfolding Conv)
    if node.op_type == "Gemm" and "transA" in node.attributes and node.attributes["transA"].as_int():
        return False  # rows of A are not input vectors
    weight = layer_weight(node)
    if weight is not None:
        return weight.size > 0
    return node.op_type == "MatMul" and activation_matmul


def find_sites(graph: ir.Graph, config: AnalogConfig, only: Collection[str] | None = None) -> list[Site]:
    """The sites of ``graph`` under ``config`` (named in ``only``, when given), in graph order."""
    p = config.placement
    layers = [n for n in graph if is_analog_layer(n, p.activation_matmul)]
    is_layer = {id(n) for n in layers}
    digital = set()
    if layers and p.keep_first_digital:
        digital.add(id(layers[0]))
    if layers and p.keep_last_digital:
        digital.add(id(layers[-1]))
    wanted = ANALOG_OP_TYPES if p.where == "mvm" else tuple(p.op_types)
    candidates = layers if p.where == "mvm" else [n for n in graph if n.domain == "" and n.op_type in wanted
                                                  and ROLE_KEY not in n.metadata_props]
    sites = []
    if p.where == "activations" and p.network_inputs:
        sites += [Site(v.name or "", "Input", v) for v in graph.inputs if _is_float_activation(v)]
    for node in candidates:
        name = site_name(node)
        if id(node) in digital or node.op_type in p.exclude_op_types:
            continue
        if not _selected(name, p.include, p.exclude):
            continue
        weight = layer_weight(node) if id(node) in is_layer else None
        sites.append(Site(name, node.op_type, node.outputs[0], node, weight))
    sites = [s for s in sites if s.op_type != "Input" or _selected(s.name, p.include, p.exclude)]
    return sites if only is None else [s for s in sites if s.name in only]


def _selected(name: str, include: list[str], exclude: list[str]) -> bool:
    if include and not any(re.search(pattern, name) for pattern in include):
        return False
    return not any(re.search(pattern, name) for pattern in exclude)


def _is_float_activation(value: ir.Value) -> bool:
    return value.const_value is None and value.dtype == ir.DataType.FLOAT
