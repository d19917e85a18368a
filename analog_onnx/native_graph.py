"""What a session with our native kernels runs: the transformed model after two in-memory
rewrites that only those kernels make possible. The file on disk is never changed, so it keeps
running anywhere through its function bodies.

- ``fold_constant_quantizers``: onnxruntime constant-folds a function body but never a custom
  kernel, so a native session would quantize constant weights again on every run and, worse, lose
  the prepacked (NCHWc) convolutions that need constant weights.
- ``fuse_tile_convolutions``: a convolution the transform made a tile reads its im2col patches
  from a standard Conv with a one-hot kernel and transposes around ``AnalogTile``; the native
  ``AnalogTileConv`` reads the patches straight from the NCHW input and writes NCHW, and the
  original layer the tile replaced (kept in the file for ``strip``) is dropped.
- ``fuse_epilogues``: our nodes sit between each convolution and the digital layers onnxruntime
  would otherwise fuse into it (bias, BatchNormalization, ReLU), which then run as separate passes
  over the activations. ``MvmOutputEpilogue`` applies them per channel in MvmOutput's own pass,
  the tiles in theirs; a scalar known only at run time that multiplies the output first (a drift
  compensation factor) joins the epilogue's scale.
- ``fuse_residuals``: a residual network adds each block's input to its last convolution's
  output and then applies a ReLU, two more passes over the activations that onnxruntime fuses
  into its own Conv. An ``AnalogTileConv`` whose output only that ``Add`` reads takes the other
  summand as its input R (when shape inference proves it the output's shape) and the ``Relu``
  after it, in its own pass.
- ``fuse_noise_chains``: activation noise (``hardening-additive``) puts a ``Noise`` after every
  convolution, BatchNormalization and ReLU, so each of them, and each Noise, is a pass of its own.
  ``NoiseChain`` runs a Noise and the elementwise steps after it (more Noise, inference
  BatchNormalization, per-channel bias, a residual Add, ReLU) in one pass, each Noise drawing the
  normals its own op would; the convolution stays onnxruntime's.
- ``read_weights_from_file``: onnxruntime keeps its own copy of every weight it loads, and a tile
  keeps its packed one: a big model's weights twice in memory. A tile whose constant W lies in the
  model's external data file (straight, or through a Transpose) reads and packs it itself
  (``AnalogTileEpilogue`` with ``weight_file``, input W left out), so onnxruntime never loads it.
- ``order_device_weights``: onnxruntime runs a node as soon as its inputs exist, and a
  ``DeviceWeights`` reads only its weight and the run's controls, so it would read out every
  layer's chip at the start of the run, the whole model's read-out weights alive at once. Each
  also reads the data its layer multiplies (an input the kernel ignores), so it runs when its
  layer is reached: one layer's read-out weights (and its chip's transients) alive at a time.

All are onnx_ir rewrites that recognize what they change by its structure (which op reads which
constant), never by how the transform tagged its nodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from analog_onnx.errors import ModelError
from analog_onnx.ops import DOMAIN, OPS, reference
from analog_onnx.ops.nodes import check_nodes
from analog_onnx.ops.schema import ChainStep
from analog_onnx.passes.common import take_over
from analog_onnx.passes.names import Names

ModelLike = str | Path | bytes | onnx.ModelProto


def prepare(model: ModelLike, folder: str | Path | None = None) -> ModelLike:
    """``model`` with the rewrites applied, or ``model`` itself when none applies. A file's tensors
    in external data stay there: the result refers to them relative to the file's folder (give
    onnxruntime that folder, as ``runtime.make_session`` does), so a model of any size is never
    copied into one protobuf message. ``folder``: where the external data of a model given as
    bytes or a proto lies (a file's is its own folder)."""
    folder = Path(model).resolve().parent if isinstance(model, str | Path) else folder
    work = _read(model)
    if folder is not None and not isinstance(model, str | Path):
        ir.external_data.set_base_dir(work.graph, Path(folder).resolve())
    _refuse_stored_weights(work)
    check_nodes(work.graph)  # the rewrites read our nodes' inputs and attributes as the schema declares them
    changed = _fold_constant_quantizers(work)
    changed = _fuse_tile_convolutions(work) or changed
    changed = _fuse_epilogues(work) or changed
    changed = _fuse_residuals(work) or changed
    changed = _fuse_noise_chains(work) or changed
    changed = _drop_unused_nodes(work) or changed
    changed = _order_device_weights(work) or changed
    if folder is not None:  # its external data has a folder
        changed = _read_weights_from_file(work, Path(folder).resolve()) or changed
    return ir.serde.serialize_model(work) if changed else model


def fold_constant_quantizers(model: ModelLike) -> onnx.ModelProto | None:
    """A copy of ``model`` with each ``Quantize`` of a constant weight replaced by its result
    (from the numpy reference: the same bits), or None when there is none."""
    work = ir.serde.deserialize_model(_load(model))
    return ir.serde.serialize_model(work) if _fold_constant_quantizers(work) else None


def fuse_epilogues(model: ModelLike) -> onnx.ModelProto | None:
    """A copy of ``model`` where each per-sample ``MvmOutput`` of a Conv or Gemm absorbs the chain
    of constant per-channel ``Add``s, inference ``BatchNormalization``s and a final ``Relu`` that
    follows it alone, or None when there is no such chain."""
    work = ir.serde.deserialize_model(_load(model))
    return ir.serde.serialize_model(work) if _fuse_epilogues(work) else None


def fuse_noise_chains(model: ModelLike) -> onnx.ModelProto | None:
    """A copy of ``model`` where each additive/multiplicative ``Noise`` and the elementwise steps
    after it that read each other's values alone are one ``NoiseChain``, or None when there is
    no such chain of two or more nodes."""
    work = ir.serde.deserialize_model(_load(model))
    return ir.serde.serialize_model(work) if _fuse_noise_chains(work) else None


# -- the rewrites ------------------------------------------------------------------------------
def _fold_constant_quantizers(model: ir.Model) -> bool:
    graph = model.graph
    quantizers = [n for n in graph if _is_ours(n, "Quantize") and _weight_initializer(graph, n.inputs[0])]
    for node in quantizers:
        values = reference.quantize(node.inputs[0].const_value.numpy(), **_attributes(node))
        _replace_by_constant(graph, node.outputs[0], values)
        graph.remove(node, safe=True)
    return bool(quantizers)


def _fuse_tile_convolutions(model: ir.Model) -> bool:
    graph, names = model.graph, Names(model)
    fused = False
    for node in [n for n in graph if _is_ours(n, "AnalogTile")]:
        parts = _tile_convolution(graph, node)
        if parts is None:
            continue
        unfold, patches, back, factor, kernel_shape = parts
        conv_attributes = {k: v for k, v in _attributes(unfold).items() if k in ("pads", "strides", "dilations")}
        base = names.node(f"{node.name}/conv")
        channels = node.inputs[1].shape[0] if node.inputs[1].shape is not None else None
        if not isinstance(channels, int):
            continue
        identity = [_initializer(graph, names.value(f"{base}/{what}"), np.full(channels, value, np.float32))
                    for what, value in (("scale", 1.0), ("shift", 0.0))]
        weight = _kernel_of(graph, names, node, (channels, *kernel_shape))
        tile = ir.node("AnalogTileConv", [unfold.inputs[0], weight, *node.inputs[2:], *identity],
                       {**_attributes(node), **conv_attributes, "relu": 0}, domain=DOMAIN, name=base)
        out, result = back.outputs[0], tile.outputs[0]
        if factor is not None:  # a scalar factor commutes with the layout change: it now follows the fused tile
            factor.replace_input_with(list(factor.inputs).index(node.outputs[0]), tile.outputs[0])
            result, tile.outputs[0].name = factor.outputs[0], names.value(base)
        take_over(out, result, take_name=True)
        result.type, result.shape = out.type, out.shape
        graph.insert_before(node, tile)
        graph.remove([back, node, patches, unfold], safe=True)
        fused = True
    return fused


def _tile_convolution(graph: ir.Graph, node: ir.Node) -> tuple | None:
    """(unfolding Conv, Transpose to patches, Transpose to NCHW, the runtime-factor Mul between the
    tile and that Transpose or None, the layer's (C, kh, kw)) around an AnalogTile that computes a
    2-D convolution, or None."""
    patches = node.inputs[0].producer()
    factor = _runtime_factor(graph, node.outputs[0])
    back = _only_consumer(graph, (factor or node).outputs[0])
    if patches is None or back is None or not _is_standard(patches, "Transpose", [0, 2, 3, 1]) \
            or not _is_standard(back, "Transpose", [0, 3, 1, 2]):
        return None
    unfold = patches.inputs[0].producer()
    if unfold is None or unfold.op_type != "Conv" or unfold.domain != "" or _only_consumer(graph, unfold.outputs[0]) \
            is not patches or _attributes(unfold).get("auto_pad", "NOTSET") != "NOTSET":
        return None
    kernel_shape = _one_hot_kernel_shape(unfold.inputs[1])
    if kernel_shape is None or len(unfold.inputs) > 2 or _attributes(unfold).get("group", 1) != 1:
        return None
    return unfold, patches, back, factor, kernel_shape


def _one_hot_kernel_shape(kernel: ir.Value) -> tuple[int, int, int] | None:
    """(C, kh, kw) when ``kernel`` is an unfolding Conv's one-hot kernel [C*kh*kw, C, kh, kw]: built
    at run time as the transform builds it (Reshape of EyeLike of ConstantOfShape zeros), or a
    constant (files of earlier versions)."""
    reshape = kernel.producer()
    if reshape is not None and reshape.domain == "" and reshape.op_type == "Reshape":
        eye, shape = reshape.inputs[0].producer(), _constant(reshape.inputs[1])
        zeros = eye.inputs[0].producer() if eye is not None and eye.op_type == "EyeLike" and eye.domain == "" else None
        size = _constant(zeros.inputs[0]) if zeros is not None and zeros.op_type == "ConstantOfShape" else None
        value = _attributes(zeros).get("value") if zeros is not None else None
        plain_eye = eye is not None and not _attributes(eye).get("k", 0)
        zero_fill = value is not None and not np.any(value.numpy())
        if (shape is not None and size is not None and plain_eye and zero_fill and shape.shape == (4,)
                and size.tolist() == [shape[0], shape[0]] and shape[0] == np.prod(shape[1:])):
            return tuple(int(d) for d in shape[1:])
        return None
    constant = _constant(kernel)
    if constant is None or constant.ndim != 4:
        return None
    eye = np.eye(constant.shape[0], dtype=constant.dtype)
    return tuple(constant.shape[1:]) if np.array_equal(constant.reshape(constant.shape[0], -1), eye) else None


def _kernel_of(graph: ir.Graph, names: Names, tile: ir.Node, shape: tuple[int, ...]) -> ir.Value:
    """The tile's ``W`` [M, C*kh*kw] as the convolution kernel [M, C, kh, kw]: the kernel it was
    reshaped from, else a Reshape of ``W`` (a weight computed at run time, e.g. by DeviceWeights)."""
    w = tile.inputs[1]
    reshape = w.producer()
    if reshape is not None and reshape.domain == "" and reshape.op_type == "Reshape" \
            and reshape.inputs[0].shape is not None and tuple(reshape.inputs[0].shape) == shape:
        return reshape.inputs[0]
    target = _initializer(graph, names.value(f"{tile.name}/kernel_shape"), np.array(shape, np.int64))
    kernel = ir.node("Reshape", [w, target], name=names.node(f"{tile.name}/kernel"))
    kernel.outputs[0].name, kernel.outputs[0].type = names.value(f"{tile.name}/kernel"), w.type
    kernel.outputs[0].shape = ir.Shape(shape)
    graph.insert_before(tile, kernel)
    return kernel.outputs[0]


def _is_standard(node: ir.Node, op_type: str, perm: list[int]) -> bool:
    return node.domain == "" and node.op_type == op_type and list(_attributes(node).get("perm", [])) == perm


def _drop_unused_nodes(model: ir.Model) -> bool:
    """Remove the nodes none of whose outputs is read (the layers tiles replaced), repeatedly, and
    then the initializers nothing reads (so onnxruntime never loads them)."""
    graph, dropped = model.graph, False
    while unused := [n for n in graph if not any(v.uses() or v.is_graph_output() for v in n.outputs)]:
        graph.remove(unused, safe=True)
        dropped = True
    for name, value in list(graph.initializers.items()):
        if not value.uses() and not value.is_graph_output() and not value.is_graph_input():
            del graph.initializers[name]
            dropped = True
    return dropped


def _refuse_stored_weights(model: ir.Model) -> None:
    """A file may not name a file for a kernel to read: only ``read_weights_from_file`` does."""
    for node in model.graph.all_nodes():
        if node.domain == DOMAIN and _attributes(node).get("weight_file"):
            raise ModelError(f"node {node.name!r} ({node.op_type}) sets weight_file, which only a native "
                             "session's own rewrite may set")


def _read_weights_from_file(model: ir.Model, folder: Path) -> bool:
    graph, names, changed = model.graph, Names(model), False
    for node in [n for n in graph if _is_ours(n, "AnalogTile") or _is_ours(n, "AnalogTileEpilogue")]:
        stored = _stored_weight(graph, node.inputs[1], folder)
        if stored is None:
            continue
        if node.op_type == "AnalogTile":  # the native-session form, with no epilogue
            tile = ir.node("AnalogTileEpilogue", [*node.inputs], _attributes(node), domain=DOMAIN, name=node.name)
            _take_the_place(graph, [node], tile)
            node = tile
        node.replace_input_with(1, None)
        node.attributes.update(_stored_attributes(stored))
        changed = True
    for node in [n for n in graph if _is_ours(n, "DeviceWeights")]:
        stored = _stored_weight(graph, node.inputs[0], folder)
        if stored is None:
            continue
        after = node.inputs[5:6]  # the layer's data, which order_device_weights gave it
        read = ir.node("StoredWeights", after, _stored_attributes(stored), domain=DOMAIN,
                       name=names.node(f"{node.name or node.outputs[0].name}/stored_weights"))
        read.outputs[0].name = names.value(f"{node.name or node.outputs[0].name}/stored_weights")
        read.outputs[0].dtype, read.outputs[0].shape = ir.DataType.FLOAT, ir.Shape(stored["weight_shape"])
        graph.insert_before(node, read)
        node.replace_input_with(0, read.outputs[0])
        changed = True
    return _drop_unused_nodes(model) if changed else False


def _stored_attributes(stored: dict) -> dict[str, ir.Attr]:
    types = {str: ir.AttributeType.STRING, int: ir.AttributeType.INT, list: ir.AttributeType.INTS}
    return {name: ir.Attr(name, types[type(value)], value) for name, value in stored.items()}


def _stored_weight(graph: ir.Graph, weight: ir.Value | None, folder: Path) -> dict | None:
    """The attributes that tell a tile where its W lies in the data file (``weight_file`` ...), when
    W is a float32 [M, K] initializer in a data file inside ``folder``, or the Transpose of a
    [K, M] one; else None."""
    transposed = 0
    producer = weight.producer() if weight is not None else None
    if producer is not None and producer.domain == "" and producer.op_type == "Transpose":
        if list(_attributes(producer).get("perm", [1, 0])) != [1, 0]:
            return None
        weight, transposed = producer.inputs[0], 1
    if weight is None or not _weight_initializer(graph, weight) or len(weight.shape or ()) != 2:
        return None
    tensor = weight.const_value
    if not isinstance(tensor, ir.ExternalTensor):
        return None
    path = Path(tensor.path).resolve()
    dims = [int(d) for d in tensor.shape.dims]
    rows, columns = reversed(dims) if transposed else dims
    if not path.is_relative_to(folder) or not path.is_file() or tensor.length not in (None, 4 * rows * columns):
        return None
    return {"weight_file": str(path), "weight_offset": int(tensor.offset or 0),
            "weight_shape": [rows, columns], "weight_transposed": transposed}


def _fuse_epilogues(model: ir.Model) -> bool:
    graph, names = model.graph, Names(model)
    fused = False
    for node in list(graph):
        shape = _epilogue_shape(node)
        if shape is None:
            continue
        factor = _runtime_factor(graph, node.outputs[0])
        chain, scale, shift, relu = _epilogue_chain(graph, (factor or node).outputs[0], *shape)
        if chain or factor:
            _fuse(graph, names, node, [factor] if factor else [], chain, scale, shift, relu)
            fused = True
    return fused


def _epilogue_shape(node: ir.Node) -> tuple[int, int] | None:
    """(rank, channels) of the output of a node that can take an epilogue, else None: a per-sample
    MvmOutput of a Conv or Gemm, an AnalogTileConv, or an AnalogTile of rank-2 vectors."""
    if _is_ours(node, "MvmOutput") and _attributes(node).get("axis", 1) == 1:
        return _layer_output_shape(node.inputs[0].producer())
    if _is_ours(node, "AnalogTileConv") and not _attributes(node).get("relu"):
        return 4, len(node.inputs[4].const_value.numpy())
    weight = node.inputs[1].shape if _is_ours(node, "AnalogTile") else None  # [outputs, inputs], set by the transform
    if weight is None or len(weight) != 2 or not isinstance(weight[0], int):
        return None
    source, shapes = node.inputs[0].producer(), (node.inputs[0].shape, node.outputs[0].shape)
    rank_two = any(s is not None and len(s) == 2 for s in shapes) or (source is not None
                                                                       and source.op_type == "Flatten")
    return (2, weight[0]) if rank_two else None


def _epilogue_chain(graph: ir.Graph, value: ir.Value, rank: int, channels: int
                    ) -> tuple[list[ir.Node], np.ndarray, np.ndarray, int]:
    """The affine steps (and a final Relu) that read ``value`` alone, folded to scale and shift."""
    scale, shift, chain = np.ones(channels), np.zeros(channels), []
    while (step := _only_consumer(graph, value)) is not None:
        if step.op_type == "Relu" and step.domain == "":
            return [*chain, step], scale, shift, 1
        affine = _affine_step(step, value, rank, channels)
        if affine is None:
            break
        scale, shift = scale * affine[0], shift * affine[0] + affine[1]
        chain.append(step)
        value = step.outputs[0]
    return chain, scale, shift, 0


def _fuse(graph: ir.Graph, names: Names, node: ir.Node, factor: list[ir.Node], chain: list[ir.Node],
          scale: np.ndarray, shift: np.ndarray, relu: int) -> None:
    """Put one node with the epilogue where ``node`` was (``MvmOutputEpilogue``, ``AnalogTileEpilogue``
    or the ``AnalogTileConv`` with its scale and shift composed); it defines the chain's last value.
    ``factor``: the runtime-factor Mul that comes first, if any; its scalar multiplies the scale."""
    base = f"{node.name or node.outputs[0].name}/epilogue"
    inputs = list(node.inputs)
    if node.op_type == "AnalogTileConv":  # compose with the epilogue it has
        before_scale, before_shift = (v.const_value.numpy().astype(np.float64) for v in inputs[4:6])
        scale, shift, inputs = before_scale * scale, before_shift * scale + shift, inputs[:4]
    constants = [_initializer(graph, names.value(f"{base}/{what}"), array.astype(np.float32))
                 for what, array in (("scale", scale), ("shift", shift))]
    steps = [*factor, *chain]
    if factor:  # (y * f) * a + b: the per-channel scale a times f, computed once per run
        times = ir.node("Mul", [constants[0], _other_input(factor[0], node.outputs[0])],
                        name=names.node(f"{base}/scale_factor"))
        times.outputs[0].name = names.value(f"{base}/scale_factor")
        graph.insert_before(node, times)
        constants[0] = times.outputs[0]
    op_type = {"MvmOutput": "MvmOutputEpilogue", "AnalogTile": "AnalogTileEpilogue"}.get(node.op_type, node.op_type)
    fused = ir.node(op_type, [*inputs, *constants], {**_attributes(node), "relu": relu},
                    domain=DOMAIN, name=names.node(base))
    _take_the_place(graph, [node, *steps], fused)


def _fuse_residuals(model: ir.Model) -> bool:
    graph, shapes = model.graph, _InferredShapes(model)
    fused = False
    for node in list(graph):
        if not _is_ours(node, "AnalogTileConv") or len(node.inputs) != 6 or None in node.inputs[4:] \
                or _attributes(node).get("relu"):
            continue
        add = _only_consumer(graph, node.outputs[0])
        if add is None or add.op_type != "Add" or add.domain != "" or len(add.inputs) != 2:
            continue
        residual = _other_input(add, node.outputs[0])
        if residual is None or residual is node.outputs[0] or not shapes.same(node.outputs[0], residual) \
                or not shapes.same(node.outputs[0], add.outputs[0]):
            continue
        relu = _only_consumer(graph, add.outputs[0])
        steps = [node, add] + ([relu] if relu is not None and relu.op_type == "Relu" and relu.domain == "" else [])
        tile = ir.node("AnalogTileConv", [*node.inputs, residual], {**_attributes(node), "relu": int(len(steps) == 3)},
                       domain=DOMAIN, name=node.name)
        _take_the_place(graph, steps, tile)
        fused = True
    return fused


def _order_device_weights(model: ir.Model) -> bool:
    graph, ordered = model.graph, False
    for node in [n for n in graph if _is_ours(n, "DeviceWeights") and len(n.inputs) == 5]:
        found = _layer_of_weight(graph, node)
        if found is None:
            continue
        path, layer, data = found
        node.resize_inputs(6)
        node.replace_input_with(5, data)
        graph.remove(path, safe=False)  # next to its layer: the file's order stays topological
        graph.insert_before(layer, path)
        ordered = True
    return ordered


def _layer_of_weight(graph: ir.Graph, device: ir.Node) -> tuple[list[ir.Node], ir.Node, ir.Value] | None:
    """(``device`` and the steps that reshape its weight alone, the layer that reads the weight,
    the data that layer multiplies) when the weight has one reader at each step, else None. The
    data is the layer's first input that is neither the weight, nor a constant, nor an input of
    ``device`` (the controls), nor computed from ``device``."""
    path, value, own = [device], device.outputs[0], {*device.inputs}
    while (reader := _only_consumer(graph, value)) is not None:
        others = [v for v in reader.inputs
                  if v is not None and v is not value and v not in own and _constant(v) is None]
        if not others:  # a Transpose, a Reshape by a constant: still the weight
            path.append(reader)
            value = reader.outputs[0]
            continue
        return None if _computed_from(others[0], device) else (path, reader, others[0])
    return None


def _computed_from(value: ir.Value, node: ir.Node) -> bool:
    """Whether ``value`` is an output of ``node`` or of a node that reads one, at any depth."""
    seen, stack = set(), [value]
    while stack:
        producer = stack.pop().producer()
        if producer is node:
            return True
        if producer is not None and producer not in seen:
            seen.add(producer)
            stack.extend(v for v in producer.inputs if v is not None)
    return False


@dataclass
class _NoiseChain:
    """The nodes a NoiseChain replaces and its program: the steps, the Noise nodes whose attributes
    the noise steps take, a (scale, shift) per channel for each affine step, the residual input."""

    nodes: list[ir.Node]
    steps: list[ChainStep] = field(default_factory=list)
    noises: list[ir.Node] = field(default_factory=list)
    affines: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    residual: ir.Value | None = None


def _fuse_noise_chains(model: ir.Model) -> bool:
    graph, names, shapes = model.graph, Names(model), _InferredShapes(model)
    fused = False
    for node in list(graph):
        chain = _noise_chain(graph, node, shapes) if node.graph is graph else None
        if chain is None:
            continue
        start, noises = chain.nodes[0], [_attributes(n) for n in chain.noises]
        base = names.node(f"{start.name or start.outputs[0].name}/chain")
        affine = [None, None]
        if chain.affines:
            affine = [_initializer(graph, names.value(f"{base}/{what}"), np.stack(rows).astype(np.float32))
                      for what, rows in zip(("scale", "shift"), zip(*chain.affines, strict=True), strict=True)]
        attributes = {"steps": [int(step) for step in chain.steps],
                      "streams": [int(a.get("stream", 0)) for a in noises],
                      **{sigma: [float(a.get(sigma, 0.0)) for a in noises] for sigma in ("sigma_add", "sigma_mul")}}
        inputs = [*start.inputs, *affine, chain.residual]
        while inputs[-1] is None:  # optional inputs not given
            inputs.pop()
        _take_the_place(graph, chain.nodes, ir.node("NoiseChain", inputs, attributes, domain=DOMAIN, name=base))
        fused = True
    return fused


def _noise_chain(graph: ir.Graph, start: ir.Node, shapes: _InferredShapes) -> _NoiseChain | None:
    """The chain from the Noise ``start`` on while each step reads the value before it alone,
    when it has two nodes or more, else None."""
    if not _is_plain_noise(start):
        return None
    chain, value = _NoiseChain([start], [ChainStep.NOISE], [start]), start.outputs[0]
    while (step := _only_consumer(graph, value)) is not None and _add_chain_step(chain, step, value, shapes):
        chain.nodes.append(step)
        value = step.outputs[0]
    return chain if len(chain.nodes) > 1 else None


def _add_chain_step(chain: _NoiseChain, step: ir.Node, value: ir.Value, shapes: _InferredShapes) -> bool:
    """Whether ``step``, which reads ``value`` alone of the chain, is one more elementwise step
    (recorded in ``chain``): a plain Noise with the chain's controls, a Relu, a per-channel affine
    step of constants, or an Add of a value proven to have ``value``'s shape."""
    start = chain.nodes[0]
    if _is_plain_noise(step) and step.inputs[0] is value and step.inputs[1:] == start.inputs[1:]:
        chain.steps.append(ChainStep.NOISE)
        chain.noises.append(step)
        return True
    if step.domain != "" or len(step.outputs) != 1:
        return False
    if step.op_type == "Relu":
        chain.steps.append(ChainStep.RELU)
        return True
    affine = _chain_affine(step, value, shapes)
    if affine is not None:
        if chain.affines and len(chain.affines[0][0]) != len(affine[0]):
            return False  # one row of C values per affine step
        if chain.steps[-1] == ChainStep.AFFINE:  # compose with the step before
            (a, b), (c, d) = chain.affines.pop(), affine
            affine = a * c, b * c + d
        else:
            chain.steps.append(ChainStep.AFFINE)
        chain.affines.append(affine)
        return True
    if step.op_type != "Add" or len(step.inputs) != 2 or chain.residual is not None:
        return False
    other = _other_input(step, value)
    if other is value or not shapes.same(value, other):
        return False
    chain.steps.append(ChainStep.RESIDUAL)
    chain.residual = other
    return True


def _chain_affine(step: ir.Node, value: ir.Value, shapes: _InferredShapes) -> tuple[np.ndarray, np.ndarray] | None:
    """(a, b) per channel when ``step`` computes ``value * a + b`` from constants, with the channels
    a BatchNormalization's parameters or the inferred shape of ``value`` give."""
    if step.op_type == "BatchNormalization":
        gamma = _constant(step.inputs[1]) if len(step.inputs) > 1 else None
        return None if gamma is None or gamma.ndim != 1 else _affine_step(step, value, 2, len(gamma))  # any rank
    dims = shapes.of(value)
    if step.op_type != "Add" or dims is None or len(dims) < 2 or not isinstance(dims[1], int):
        return None
    return _affine_step(step, value, len(dims), dims[1])


def _is_plain_noise(node: ir.Node) -> bool:
    """A Noise whose every element is independent of the others (not ``relative``: that one scales
    by its row's abs-max)."""
    return (_is_ours(node, "Noise") and not _attributes(node).get("relative", 0) and len(node.inputs) == 3
            and None not in node.inputs and len(node.outputs) == 1)


class _InferredShapes:
    """Value shapes from onnx's shape inference, run on first need over a copy of the model whose
    ops of ours that keep their input's shape are Identity (inference cannot see through them)."""

    def __init__(self, model: ir.Model) -> None:
        self._model, self._shapes = model, None

    def of(self, value: ir.Value) -> tuple[int | str, ...] | None:
        """The dims of ``value`` (sizes or symbolic names), None where any is unknown."""
        if self._shapes is None:
            self._shapes = _inferred_shapes(self._model)
        return self._shapes.get(value.name or "")

    def same(self, a: ir.Value, b: ir.Value) -> bool:
        dims = self.of(a)
        return dims is not None and dims == self.of(b)


def _inferred_shapes(model: ir.Model) -> dict[str, tuple[int | str, ...]]:
    proto = ir.serde.serialize_model(model)
    del proto.functions[:]
    # inference needs a weight's shape, not its values (it copies them: 0.2 s for ResNet-18's
    # 45 MB): a large initializer becomes a graph input of its type; small ones (the shapes a
    # Reshape reads) stay
    inputs = {i.name for i in proto.graph.input}
    kept = []
    for tensor in proto.graph.initializer:
        if np.prod(tensor.dims, dtype=np.int64) <= _INFERENCE_KEEPS:
            kept.append(tensor)
        elif tensor.name not in inputs:
            proto.graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))
    proto.graph.ClearField("initializer")
    proto.graph.initializer.extend(kept)
    for node in proto.graph.node:
        if node.domain == DOMAIN and node.op_type in _SHAPE_KEEPING:
            node.CopyFrom(onnx.helper.make_node("Identity", node.input[:1], node.output[:1], name=node.name))
        elif node.domain == DOMAIN and node.op_type == "AnalogTileConv":  # the convolution it computes
            geometry = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute
                        if a.name in ("pads", "strides", "dilations")}
            node.CopyFrom(onnx.helper.make_node("Conv", node.input[:2], node.output[:1], name=node.name, **geometry))
    try:
        inferred = onnx.shape_inference.infer_shapes(proto).graph
    except onnx.shape_inference.InferenceError:
        return {}  # nothing proven
    shapes = {}
    for info in (*inferred.input, *inferred.value_info, *inferred.output):
        tensor = info.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else d.dim_param or None for d in tensor.shape.dim]
        if tensor.HasField("shape") and None not in dims:
            shapes[info.name] = tuple(dims)
    return shapes


_INFERENCE_KEEPS = 64  # elements of an initializer whose values shape inference is given
_SHAPE_KEEPING = {op.name for op in OPS if not op.product}  # their first output has their first input's shape


def _take_the_place(graph: ir.Graph, nodes: list[ir.Node], fused: ir.Node) -> None:
    """Put ``fused`` where the last of ``nodes`` was, defining that node's output (its name, type
    and shape), and remove ``nodes``."""
    last = nodes[-1].outputs[0]
    take_over(last, fused.outputs[0], take_name=True)
    fused.outputs[0].type, fused.outputs[0].shape = last.type, last.shape
    graph.insert_before(nodes[-1], fused)
    graph.remove(nodes, safe=True)


# -- what the rewrites recognize ---------------------------------------------------------------
def _affine_step(step: ir.Node, value: ir.Value, rank: int, channels: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(a, b) per channel when ``step`` computes ``value * a + b`` from constants, else None."""
    if step.domain != "" or len(step.outputs) != 1:
        return None
    if step.op_type == "Add" and len(step.inputs) == 2 and value in step.inputs:
        bias = _per_channel(_constant(_other_input(step, value)), rank, channels)
        return None if bias is None else (np.ones(channels), bias)
    if step.op_type == "BatchNormalization" and step.inputs[0] is value and not _attributes(step).get("training_mode"):
        params = [_constant(v) for v in step.inputs[1:5]]
        if len(params) < 4 or any(p is None or p.shape != (channels,) for p in params):
            return None
        gamma, beta, mean, var = (p.astype(np.float64) for p in params)
        a = gamma / np.sqrt(var + _attributes(step).get("epsilon", 1e-5))
        return a, beta - mean * a
    return None


def _runtime_factor(graph: ir.Graph, value: ir.Value) -> ir.Node | None:
    """The Mul that alone reads ``value`` and multiplies it by a float scalar known only at run
    time (as a drift-compensation factor), else None."""
    step = _only_consumer(graph, value)
    if step is None or step.domain != "" or step.op_type != "Mul" or len(step.inputs) != 2:
        return None
    other = _other_input(step, value)
    if other is value or other is None or _constant(other) is not None or other.shape is None:
        return None
    scalar = len(other.shape) == 0 or tuple(other.shape) == (1,)
    return step if scalar and other.dtype == ir.DataType.FLOAT else None


def _other_input(step: ir.Node, value: ir.Value) -> ir.Value | None:
    return step.inputs[1] if step.inputs[0] is value else step.inputs[0]


def _per_channel(array: np.ndarray | None, rank: int, channels: int) -> np.ndarray | None:
    """``array`` as one value per channel when adding it to a [N, C, ...] tensor is per channel."""
    if array is None or array.ndim > rank or not np.issubdtype(array.dtype, np.floating):
        return None
    padded = array.reshape((1,) * (rank - array.ndim) + array.shape)
    if any(size != 1 for axis, size in enumerate(padded.shape) if axis != 1) or padded.shape[1] not in (1, channels):
        return None
    return np.broadcast_to(padded.reshape(-1), (channels,)).astype(np.float64)


def _layer_output_shape(layer: ir.Node | None) -> tuple[int, int] | None:
    """(rank, channels) of a Conv's or Gemm's output, from its constant weight; None otherwise."""
    if layer is None or layer.domain != "" or layer.op_type not in ("Conv", "Gemm") or len(layer.inputs) < 2:
        return None
    weight = _constant(layer.inputs[1])
    source = layer.inputs[1].producer() if layer.inputs[1] is not None else None
    if weight is None and source is not None and (source.op_type == "DequantizeLinear"  # a QDQ model
                                                  or source.domain == DOMAIN and source.op_type in _SHAPE_KEEPING):
        weight = _constant(source.inputs[0])  # the same shape (a weight an effect computes at run time)
    if weight is None:
        return None
    if layer.op_type == "Conv":
        return weight.ndim, weight.shape[0]
    return 2, weight.shape[0] if _attributes(layer).get("transB", 0) else weight.shape[1]


def _constant(value: ir.Value | None) -> np.ndarray | None:
    """The value if it is known before the run: an initializer no input overrides, a Constant, or
    a Reshape or Mul of those (how a bias is shaped for a Conv or scaled by Gemm's beta)."""
    if value is None:
        return None
    if value.const_value is not None:
        return None if value.is_graph_input() else value.const_value.numpy()
    node = value.producer()
    if node is None or node.domain != "":
        return None
    if node.op_type == "Constant" and "value" in node.attributes:
        return node.attributes["value"].as_tensor().numpy()
    if node.op_type not in ("Reshape", "Mul") or len(node.inputs) != 2:
        return None
    inputs = [_constant(v) for v in node.inputs]
    if inputs[0] is None or inputs[1] is None:
        return None
    return inputs[0].reshape(inputs[1]) if node.op_type == "Reshape" else inputs[0] * inputs[1]


def _only_consumer(graph: ir.Graph, value: ir.Value) -> ir.Node | None:
    """The one node of ``graph`` that reads ``value``, when nothing else does (no graph output,
    no second node, no node inside an If/Loop body)."""
    if value.is_graph_output():
        return None
    readers = {use.node for use in value.uses()}
    if len(readers) != 1:
        return None
    reader = readers.pop()
    return reader if reader.graph is graph else None


def _weight_initializer(graph: ir.Graph, value: ir.Value | None) -> bool:
    return (value is not None and value.const_value is not None and not value.is_graph_input()
            and value.dtype == ir.DataType.FLOAT and value.name in graph.initializers)


# -- small helpers ------------------------------------------------------------------------------
def _is_ours(node: ir.Node, op_type: str) -> bool:
    return node.domain == DOMAIN and node.op_type == op_type


def _attributes(node: ir.Node) -> dict:
    return {name: attribute.value for name, attribute in node.attributes.items()}


def _initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    value = ir.Value(name=name, const_value=ir.tensor(array, name=name), shape=ir.Shape(array.shape),
                     type=ir.TensorType(ir.DataType.from_numpy(array.dtype)))
    graph.register_initializer(value)
    return value


def _replace_by_constant(graph: ir.Graph, value: ir.Value, array: np.ndarray) -> None:
    """Every reader of ``value`` reads ``array`` instead, an initializer taking ``value``'s name."""
    name = value.name
    value.name = None
    constant = _initializer(graph, name, array)
    value.replace_all_uses_with(constant, replace_graph_outputs=True)


def _load(model: ModelLike) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    return onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(str(model))


def _read(model: ModelLike) -> ir.Model:
    """An IR model to rewrite: a file's external tensors are mapped lazily, not loaded."""
    return ir.load(str(model)) if isinstance(model, str | Path) else ir.serde.deserialize_model(_load(model))
