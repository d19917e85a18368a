"""Which nodes of a graph the transform touches ("sites"), in graph order.

An *analog layer* is a Conv, ConvTranspose, Gemm or MatMul whose weight is a constant (an
initializer or a Constant, possibly behind a DequantizeLinear or a Transpose: a tied output
layer reads ``Transpose(embedding)``) with at least one element (an empty weight computes
nothing); with ``activation_matmul`` a MatMul of two activations counts too. Placement "mvm"
wraps analog layers; placement "activations" perturbs the outputs of every node whose op type is
listed (and the network inputs). Include/exclude regexes, excluded op types and
keep-first/last-digital apply to both. Only the top-level graph is searched: subgraphs of
If/Loop/Scan and model-local functions are left intact, and ``nested_nodes`` names what they hold.

- Include/exclude regexes match a node's name, or the module path the exporter recorded for it
  (``pkg.torch.onnx.name_scopes``: ``blocks.0.attn.qkv``; its ``namespace``), so a dynamo export
  whose nodes are named ``node_MatMul_7`` can still be selected by ``attn`` or ``lm_head``.
- keep-first-digital keeps the first analog layer in graph order; keep-last-digital keeps the
  *output layer*: every analog layer the model's first output is computed from with no other
  analog layer in between (a tied ``lm_head``, not whatever layer the exporter wrote last).

``digital_nodes`` says, for every node that reads a constant matrix and is not a site, why.

With ``noise_after_quantizer`` (on by default) an "activations" site's noisy tensor is what the
next layer reads: when a node's only consumer is its own activation quantizer (``[Clip ->]
QuantizeLinear -> DequantizeLinear``, ``ai.analog.Quantize``, or the nodes a QONNX ``Quant``
became), the noise goes after that quantizer, as the Hardening-DNNs paper orders QuantReLU and
noise; a quantizer must not filter the noise away that an unquantized model receives in full.

Every pass finds its own sites with ``find_sites``; a layer stays an analog layer after a pass
changed its weight (a quantized weight is still a constant weight), so passes compose in any order.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from analog_onnx.config import ANALOG_OP_TYPES, AnalogConfig
from analog_onnx.effects import weight_roles
from analog_onnx.ops import DOMAIN
from analog_onnx.passes.common import QUANTIZER_KEY, ROLE_KEY

WEIGHT_INPUT = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}
NAME_SCOPES_KEY = "pkg.torch.onnx.name_scopes"  # torch's dynamo exporter: the module scopes of a node
NAMESPACE_KEY = "namespace"  # torch's dynamo exporter: the module path with classes


@dataclass
class Site:
    """One place the transform touches: a node (its output gets noise) or a layer to wrap."""

    name: str  # the node's name, its first output's name when it has none, or the input's name
    op_type: str  # "Input" for a network input
    value: ir.Value  # the tensor that gets noise ("activations" placement)
    node: ir.Node | None = None  # None for a network input
    weight: np.ndarray | None = None  # the constant weight of an analog layer, dequantized

    def __repr__(self) -> str:  # one line: never the weight's values
        weight = "None" if self.weight is None else f"{'x'.join(map(str, self.weight.shape))} {self.weight.dtype}"
        return f"Site(name={self.name!r}, op_type={self.op_type!r}, value={self.value.name!r}, weight={weight})"


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
    if producer.op_type == "Transpose" and producer.domain == "":
        source = constant_array(producer.inputs[0])
        if source is None:
            return None
        perm = producer.attributes["perm"].as_ints() if "perm" in producer.attributes else None
        return np.transpose(source, perm)
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


def output_layers(graph: ir.Graph, layers: list[ir.Node]) -> list[ir.Node]:
    """The analog layers the graph's first output is computed from with no other analog layer in
    between (walking back from the output, stopping at each layer it meets)."""
    is_layer = {id(n) for n in layers}
    found, seen = [], set()
    stack = [graph.outputs[0].producer()] if graph.outputs else []
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if id(node) in is_layer:
            found.append(node)
        else:
            stack.extend(v.producer() for v in node.inputs if v is not None)
    return found


def _kept_digital(graph: ir.Graph, config: AnalogConfig, layers: list[ir.Node]) -> dict[int, str]:
    """{id(layer): why} for the layers keep-first/last-digital keep."""
    p, kept = config.placement, {}
    if layers and p.keep_first_digital:
        kept[id(layers[0])] = "kept digital: the first analog layer (keep_first_digital)"
    if p.keep_last_digital:
        kept.update({id(n): "kept digital: the output layer (keep_last_digital)" for n in output_layers(graph, layers)})
    return kept


def _placement_reason(node: ir.Node, name: str, config: AnalogConfig, kept: dict[int, str]) -> str | None:
    """Why placement leaves this candidate digital, or None when it is a site."""
    p = config.placement
    if id(node) in kept:
        return kept[id(node)]
    if node.op_type in p.exclude_op_types:
        return f"op type {node.op_type} excluded (exclude_op_types)"
    return _unselected(node_labels(node, name), p.include, p.exclude)


def find_sites(graph: ir.Graph, config: AnalogConfig, only: Collection[str] | None = None) -> list[Site]:
    """The sites of ``graph`` under ``config`` (named in ``only``, when given), in graph order."""
    p = config.placement
    layers = [n for n in graph if is_analog_layer(n, p.activation_matmul)]
    is_layer = {id(n) for n in layers}
    kept = _kept_digital(graph, config, layers)
    wanted = ANALOG_OP_TYPES if p.where == "mvm" else tuple(p.op_types)
    candidates = layers if p.where == "mvm" else [n for n in graph if n.domain == "" and n.op_type in wanted
                                                  and ROLE_KEY not in n.metadata_props]
    sites = []
    if p.where == "activations" and p.network_inputs:
        sites += [Site(v.name or "", "Input", v) for v in graph.inputs
                  if _is_float_activation(v) and _unselected([v.name or ""], p.include, p.exclude) is None]
    for node in candidates:
        name = site_name(node)
        if _placement_reason(node, name, config, kept) is None:
            weight = layer_weight(node) if id(node) in is_layer else None
            value = node.outputs[0]
            if p.where == "activations" and p.noise_after_quantizer:
                value = quantized_value(value)
            sites.append(Site(name, node.op_type, value, node, weight))
    return sites if only is None else [s for s in sites if s.name in only]


@dataclass(frozen=True)
class DigitalNode:
    """A node that reads a constant matrix (a weight) but is no site, and why."""

    name: str
    op_type: str
    reason: str


def digital_nodes(graph: ir.Graph, config: AnalogConfig) -> list[DigitalNode]:
    """Every node of ``graph`` that reads a constant float tensor of rank >= 2 and that the
    transform leaves digital under ``config`` ("mvm" placement), with the reason, in graph order."""
    p = config.placement
    layers = [n for n in graph if is_analog_layer(n, p.activation_matmul)]
    is_layer = {id(n) for n in layers}
    kept = _kept_digital(graph, config, layers)
    found = []
    for node in graph:
        if node.domain != "" or ROLE_KEY in node.metadata_props or constant_array(node.outputs[0]) is not None:
            continue  # ours, or part of a constant (a weight's Transpose or dequantization)
        name = site_name(node)
        if id(node) in is_layer:
            reason = _placement_reason(node, name, config, kept)
        elif node.op_type in ANALOG_OP_TYPES:
            reason = _not_a_layer(node, p.activation_matmul)
        elif _reads_matrix(node):
            reason = ("an embedding lookup (Gather of a table): it reads rows, it computes no product"
                      if node.op_type == "Gather" else f"{node.op_type} is not a matrix-vector product")
        else:
            continue
        if reason is not None:
            found.append(DigitalNode(name, node.op_type, reason))
    return found


def nested_nodes(model: ir.Model, config: AnalogConfig) -> list[DigitalNode]:
    """The nodes of the op types ``config`` places at (analog layers' for "mvm") inside If/Loop/Scan
    subgraphs and model-local functions: the passes work on the main graph only, so these stay
    digital, and the transform and ``inspect`` say so rather than report a model left clean."""
    p = config.placement
    wanted = ANALOG_OP_TYPES if p.where == "mvm" else tuple(p.op_types)
    found: list[DigitalNode] = []

    def visit(nodes: ir.Graph | ir.Function, where: str | None) -> None:
        for node in nodes:
            if where is not None and node.domain == "" and node.op_type in wanted:
                found.append(DigitalNode(site_name(node), node.op_type,
                                         f"inside {where}: subgraphs and functions are not transformed"))
            for attribute in node.attributes.values():
                if attribute.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
                    for graph in attribute.value if attribute.type == ir.AttributeType.GRAPHS else [attribute.value]:
                        visit(graph, f"the {attribute.name} of {node.op_type} node {node.name!r}")

    visit(model.graph, None)
    for function in model.functions.values():
        if function.domain != DOMAIN:  # ours are the analog ops' bodies
            visit(function, f"function {function.name!r}")
    return found


def _not_a_layer(node: ir.Node, activation_matmul: bool) -> str:
    """Why a Conv/ConvTranspose/Gemm/MatMul is no analog layer."""
    if node.op_type == "Gemm" and "transA" in node.attributes and node.attributes["transA"].as_int():
        return "Gemm with transA: the rows of A are not input vectors"
    weight = layer_weight(node)
    if weight is not None:
        return "its weight is empty"
    if node.op_type == "MatMul" and constant_array(node.inputs[0]) is not None:
        return "its constant is the first operand (W @ x); an analog layer reads its weight as the second"
    if node.op_type == "MatMul" and not activation_matmul and not _reads_matrix(node):
        return "a product of two activations (as attention's); activation_matmul makes it analog"
    return "its weight is computed at run time, not a constant"


def _reads_matrix(node: ir.Node) -> bool:
    return any(v is not None and (a := constant_array(v)) is not None and a.ndim >= 2 and a.dtype.kind == "f"
               for v in node.inputs)


def node_labels(node: ir.Node, name: str) -> list[str]:
    """What include/exclude patterns match: the node's name, the module path its exporter recorded
    (the last module scope of ``pkg.torch.onnx.name_scopes``) and its ``namespace``."""
    labels = [name]
    scopes = node.metadata_props.get(NAME_SCOPES_KEY)
    if scopes:
        try:
            parsed = ast.literal_eval(scopes)
        except (ValueError, SyntaxError):
            parsed = None
        if isinstance(parsed, list) and len(parsed) >= 2 and all(isinstance(part, str) for part in parsed):
            labels.append(parsed[-2])  # the last entry names the op itself, the one before its module
    if node.metadata_props.get(NAMESPACE_KEY):
        labels.append(node.metadata_props[NAMESPACE_KEY])
    return labels


def _unselected(labels: list[str], include: list[str], exclude: list[str]) -> str | None:
    """Why include/exclude drop a node with these labels, or None when they keep it."""
    if include and not any(re.search(pattern, label) for pattern in include for label in labels):
        return "matches no include pattern"
    hit = next((pattern for pattern in exclude for label in labels if re.search(pattern, label)), None)
    return None if hit is None else f"matches exclude pattern {hit!r}"


def quantized_value(value: ir.Value) -> ir.Value:
    """What the next layer reads of ``value``: the output of the activation quantizer that is its
    only consumer (see the module docstring), else ``value`` itself."""
    node = _only_user(value)
    if node is None:
        return value
    if node.domain == DOMAIN and node.op_type == "Quantize":
        return node.outputs[0]
    tag = node.metadata_props.get(QUANTIZER_KEY)
    if tag is not None:  # a converted QONNX quantizer: follow its nodes to the last one
        while (following := _only_user(node.outputs[0])) is not None \
                and following.metadata_props.get(QUANTIZER_KEY) == tag:
            node = following
        return node.outputs[0]
    if node.domain == "" and node.op_type == "Clip":
        node = _only_user(node.outputs[0])
    if node is None or node.domain != "" or node.op_type != "QuantizeLinear":
        return value
    dequantize = _only_user(node.outputs[0])
    if dequantize is None or dequantize.domain != "" or dequantize.op_type != "DequantizeLinear":
        return value
    return dequantize.outputs[0]


def _only_user(value: ir.Value) -> ir.Node | None:
    """The one node that reads ``value``, when only one does and it is not a graph output."""
    users = {id(use.node): use.node for use in value.uses()}
    if len(users) != 1 or value.is_graph_output():
        return None
    return next(iter(users.values()))


def _is_float_activation(value: ir.Value) -> bool:
    return value.const_value is None and value.dtype == ir.DataType.FLOAT
