"""What a session with our native kernels runs: the transformed model after two in-memory
rewrites that only those kernels make possible. The file on disk is never changed, so it keeps
running anywhere through its function bodies.

- ``fold_constant_quantizers``: onnxruntime constant-folds a function body but never a custom
  kernel, so a native session would quantize constant weights again on every run and, worse, lose
  the prepacked (NCHWc) convolutions that need constant weights.
- ``fuse_epilogues``: our nodes sit between each convolution and the digital layers onnxruntime
  would otherwise fuse into it (bias, BatchNormalization, ReLU), which then run as separate passes
  over the activations. ``MvmOutputEpilogue`` applies them per channel in MvmOutput's own pass.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from analog_onnx.ops import DOMAIN, reference
from analog_onnx.passes.common import ROLE_KEY

ModelLike = str | Path | bytes | onnx.ModelProto


def prepare(model: ModelLike) -> ModelLike:
    """``model`` with both rewrites applied, or ``model`` itself when neither applies."""
    proto = _load(model)
    folded = fold_constant_quantizers(proto) or proto
    return fuse_epilogues(folded) or (folded if folded is not proto else model)


def fold_constant_quantizers(model: ModelLike) -> onnx.ModelProto | None:
    """A copy of ``model`` with each ``Quantize`` of a constant weight replaced by its result
    (from the numpy reference: the same bits), or None when there is none."""
    proto = _load(model)
    graph = proto.graph
    weights = {name: tensor for name, tensor in _initializers(graph).items() if tensor.data_type == TensorProto.FLOAT}
    foldable = {index for index, n in enumerate(graph.node)
                if n.domain == DOMAIN and n.op_type == "Quantize" and n.input[0] in weights}
    if not foldable:
        return None
    folded = _copy_without_nodes(proto)
    for index, node in enumerate(graph.node):
        if index not in foldable:
            folded.graph.node.append(node)
            continue
        values = reference.quantize(numpy_helper.to_array(weights[node.input[0]]), **_attributes(node))
        folded.graph.initializer.append(numpy_helper.from_array(values, node.output[0]))
    return folded


def fuse_epilogues(model: ModelLike) -> onnx.ModelProto | None:
    """A copy of ``model`` where each per-sample ``MvmOutput`` of a Conv or Gemm absorbs the chain
    of constant bias ``Add``s, inference ``BatchNormalization``s and a final ``Relu`` that follows
    it alone, or None when there is no such chain."""
    proto = _load(model)
    graph = proto.graph
    if not any(n.domain == DOMAIN and n.op_type == "MvmOutput" for n in graph.node):
        return None
    constants = _constants(graph)
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in set(node.input):
            consumers.setdefault(name, []).append(node)
    kept = {o.name for o in graph.output} | _read_by_subgraphs(graph)

    fused: dict[int, onnx.NodeProto] = {}  # id of the MvmOutput node -> its replacement
    absorbed: set[int] = set()
    new_constants: list[onnx.TensorProto] = []
    for node in graph.node:
        layer = producers.get(node.input[0]) if node.domain == DOMAIN and node.op_type == "MvmOutput" else None
        shape = _layer_output_shape(layer, constants, producers) if layer is not None else None
        if shape is None or _attributes(node).get("axis", 1) != 1:
            continue
        rank, channels = shape
        scale, shift = np.ones(channels), np.zeros(channels)
        chain, value, relu = [], node.output[0], 0
        while value not in kept and len(consumers.get(value, [])) == 1:
            step = consumers[value][0]
            if step.op_type == "Relu" and step.domain == "":
                chain.append(step)
                relu = 1
                break
            affine = _affine_step(step, value, constants, rank, channels)
            if affine is None:
                break
            scale, shift = scale * affine[0], shift * affine[0] + affine[1]
            chain.append(step)
            value = step.output[0]
        if not chain:
            continue
        name = f"{node.name or node.output[0]}/epilogue"
        new_constants += [numpy_helper.from_array(scale.astype(np.float32), f"{name}/scale"),
                          numpy_helper.from_array(shift.astype(np.float32), f"{name}/shift")]
        fused[id(node)] = helper.make_node(
            "MvmOutputEpilogue", [*node.input, f"{name}/scale", f"{name}/shift"], [chain[-1].output[0]],
            name=name, domain=DOMAIN, relu=relu, **_attributes(node))
        absorbed.update(id(step) for step in chain)
    if not fused:
        return None
    result = _copy_without_nodes(proto)
    result.graph.initializer.extend(new_constants)
    for node in graph.node:
        if id(node) not in absorbed:
            result.graph.node.append(fused.get(id(node), node))
    return result


def _affine_step(step: onnx.NodeProto, value: str, constants: dict[str, np.ndarray], rank: int,
                 channels: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(a, b) per channel when ``step`` computes ``value * a + b`` from constants, else None."""
    if step.domain != "" or len(step.output) != 1:
        return None
    if step.op_type == "Add" and len(step.input) == 2 and value in step.input:
        other = step.input[1] if step.input[0] == value else step.input[0]
        bias = _per_channel(constants.get(other), rank, channels)
        return None if bias is None else (np.ones(channels), bias)
    if step.op_type == "BatchNormalization" and step.input[0] == value and not _attributes(step).get("training_mode"):
        params = [constants.get(name) for name in step.input[1:5]]
        if any(p is None or p.shape != (channels,) for p in params):
            return None
        gamma, beta, mean, var = (p.astype(np.float64) for p in params)
        a = gamma / np.sqrt(var + _attributes(step).get("epsilon", 1e-5))
        return a, beta - mean * a
    return None


def _per_channel(array: np.ndarray | None, rank: int, channels: int) -> np.ndarray | None:
    """``array`` as one value per channel when adding it to a [N, C, ...] tensor is per channel."""
    if array is None or array.ndim > rank or not np.issubdtype(array.dtype, np.floating):
        return None
    padded = array.reshape((1,) * (rank - array.ndim) + array.shape)
    if any(size != 1 for axis, size in enumerate(padded.shape) if axis != 1) or padded.shape[1] not in (1, channels):
        return None
    return np.broadcast_to(padded.reshape(-1), (channels,)).astype(np.float64)


def _layer_output_shape(layer: onnx.NodeProto, constants: dict[str, np.ndarray],
                        producers: dict[str, onnx.NodeProto]) -> tuple[int, int] | None:
    """(rank, channels) of a Conv's or Gemm's output, from its constant weight; None otherwise."""
    if layer.domain != "" or len(layer.input) < 2 or layer.op_type not in ("Conv", "Gemm"):
        return None
    weight = constants.get(layer.input[1])
    source = producers.get(layer.input[1])
    if weight is None and source is not None and source.op_type == "DequantizeLinear":  # a QDQ model
        weight = constants.get(source.input[0])
    if weight is None:
        return None
    if layer.op_type == "Conv":
        return weight.ndim, weight.shape[0]
    return 2, weight.shape[0] if _attributes(layer).get("transB", 0) else weight.shape[1]


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Values known before the run: initializers, Constant nodes, and the transform's own bias
    steps (a Reshape for Conv, a Mul by beta for Gemm) applied to those."""
    constants = {name: numpy_helper.to_array(tensor) for name, tensor in _initializers(graph).items()}
    for node in graph.node:
        if node.domain != "" or not all(name in constants for name in node.input):
            continue
        inputs = [constants[name] for name in node.input]
        if node.op_type == "Constant" and "value" in _attributes(node):
            constants[node.output[0]] = numpy_helper.to_array(_attributes(node)["value"])
        elif _role(node) == "bias" and node.op_type == "Reshape":
            constants[node.output[0]] = inputs[0].reshape(inputs[1])
        elif _role(node) == "bias" and node.op_type == "Mul":
            constants[node.output[0]] = inputs[0] * inputs[1]
    return constants


def _read_by_subgraphs(graph: onnx.GraphProto) -> set[str]:
    """Every name a node inside an If/Loop/Scan body reads (outer values among them)."""
    names: set[str] = set()
    for node in graph.node:
        for attribute in node.attribute:
            for body in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs:
                names |= {name for inner in body.node for name in inner.input} | _read_by_subgraphs(body)
    return names


def _role(node: onnx.NodeProto) -> str | None:
    """What the transform inserted ``node`` for (see passes.common.tag), if it did."""
    return next((p.value for p in node.metadata_props if p.key == ROLE_KEY), None)


def _initializers(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """Initializers that no graph input can override."""
    overridable = {i.name for i in graph.input}
    return {i.name: i for i in graph.initializer if i.name not in overridable}


def _attributes(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _copy_without_nodes(proto: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    del copy.graph.node[:]
    return copy


def _load(model: ModelLike) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    return onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(str(model))
