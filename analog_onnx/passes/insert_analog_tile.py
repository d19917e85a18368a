"""Pass: analog layers become tiles ("mvm" placement): ``ai.analog.AnalogTile`` computes the layer.

Rule, for each analog layer with a constant weight among ``find_sites`` under the config
(restricted to ``only`` when given), in graph order:

1. Eligible layers: Gemm (``alpha = 1``, not ``transA``), MatMul, and 2-D Conv with ``group = 1``.
   Others (ConvTranspose, grouped or 1-D/3-D Conv, MatMul of two activations) are left to
   ``InsertMvmPeripheryPass``.
2. The tile reads the input vectors in the last axis and the weight as ``[outputs, inputs]``: a
   Gemm without ``transB`` and a MatMul get a Transpose of the weight; a Conv's input is unfolded
   into its patches by a standard Conv with a one-hot kernel (channel-major, as aihwkit unfolds;
   built at run time, so the file does not grow) moved to the last axis, the weight reshaped to
   ``[outputs, C*kh*kw]``, and the tile's output moved back to NCHW.
3. A bias is digital: added after the tile (times ``beta`` for Gemm).
4. The original layer stays in the graph, unused, with its inputs: ``strip`` makes its consumers
   read it again (the chain's last node names it in ``analog_onnx.replaces``).
5. The tile reads the ``noise_scale`` and ``seed`` controls and draws its own stream.
6. The tile names its layer's site in ``analog_onnx.layer``: ``InsertDeviceWeightsPass`` puts the
   chip's weights on the tile's ``W``.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from analog_onnx.config import AnalogConfig
from analog_onnx.errors import ModelError
from analog_onnx.passes.common import (
    LAYER_KEY,
    REPLACES_KEY,
    EffectPass,
    analog_node,
    control_inputs,
    is_inserted,
    next_stream,
    tag,
    take_over,
)
from analog_onnx.passes.names import Names
from analog_onnx.passes.quantize_weights import channel_axis
from analog_onnx.passes.sites import Site, find_sites, site_name

CONTROLS = ("noise_scale", "seed")


def _int(node: ir.Node, name: str, default: int) -> int:
    return node.attributes[name].as_int() if name in node.attributes else default


def _float(node: ir.Node, name: str, default: float) -> float:
    return node.attributes[name].as_float() if name in node.attributes else default


def tiles_by_layer(graph: ir.Graph) -> dict[str, ir.Node]:
    """{site name of a layer: the AnalogTile that computes it} in ``graph``."""
    return {node.metadata_props[LAYER_KEY]: node for node in graph if LAYER_KEY in node.metadata_props}


def is_tile_layer(site: Site) -> bool:
    node = site.node
    if site.weight is None or node is None:
        return False
    if node.op_type == "Gemm":
        return _float(node, "alpha", 1.0) == 1.0 and not _int(node, "transA", 0)
    if node.op_type == "MatMul":
        return site.weight.ndim == 2
    return node.op_type == "Conv" and site.weight.ndim == 4 and _int(node, "group", 1) == 1


def tile_attributes(config: AnalogConfig, stream: int) -> dict[str, int | float]:
    """The AnalogTile attributes of ``config``."""
    f, m = config.forward, config.mapping
    return {"inp_bits": f.inp_bits, "inp_bound": f.inp_bound, "noise_management": int(f.noise_management == "abs_max"),
            "out_noise": f.out_noise, "out_bits": f.out_bits, "out_bound": f.out_bound if f.out_bound > 0 else math.inf,
            "bm_rounds": f.bm_rounds(), "max_input_size": m.max_input_size, "max_output_size": m.max_output_size,
            "weight_scaling_omega": m.weight_scaling_omega,
            "weight_scaling_columnwise": int(m.weight_scaling_columnwise), "stream": stream,
            **({"w_noise": f.w_noise} if f.w_noise else {})}  # absent at 0: the models of before, byte for byte


class InsertAnalogTilePass(EffectPass):
    controls = CONTROLS

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        sites = [s for s in find_sites(graph, self.config, self.only) if is_tile_layer(s)]
        controls, names, first = control_inputs(model, CONTROLS), Names(model), next_stream(graph)
        for index, site in enumerate(sites):
            _Chain(graph, site, names).build(controls, tile_attributes(self.config, first + index))
        return ir.passes.PassResult(model, modified=bool(sites))


class _Chain:
    """The nodes that replace one layer, appended after it in order."""

    def __init__(self, graph: ir.Graph, site: Site, names: Names) -> None:
        self.graph, self.layer, self.names, self.base = graph, site.node, names, site.name
        self.weight, self.last = site.weight, site.node

    def add(self, op_type: str, inputs: list[ir.Value], attributes: dict | None = None, what: str = "") -> ir.Value:
        name = f"{self.base}/analog_{what}"
        node = tag(ir.node(op_type, inputs, attributes or {}, name=self.names.node(name)), "tile")
        node.outputs[0].name = self.names.value(name)
        self.graph.insert_after(self.last, node)
        self.last = node
        return node.outputs[0]

    def constant(self, array: np.ndarray, what: str) -> ir.Value:
        tensor = ir.tensor(array, name=self.names.value(f"{self.base}/analog_{what}"))
        return self.add("Constant", [], {"value": tensor}, what)

    def build(self, controls: list[ir.Value], attributes: dict) -> None:
        layer, kind = self.layer, self.layer.op_type
        x, w = layer.inputs[0], layer.inputs[1]
        if kind == "Conv":
            x = self.add("Transpose", [self.add("Conv", [x, self._one_hot()], self._conv_attributes(), "unfold")],
                         {"perm": [0, 2, 3, 1]}, "patches")
            w = self.add("Reshape", [w, self.constant(np.array([self.weight.shape[0], -1], np.int64), "weight_shape")],
                         what="weight_rows")
        elif kind == "MatMul" or not _int(layer, "transB", 0):
            w = self.add("Transpose", [w], {"perm": [1, 0]}, "weight_rows")
        outputs = self.weight.shape[channel_axis(layer, self.weight.ndim)]
        w.type = w.type or layer.inputs[1].type or ir.TensorType(ir.DataType.FLOAT)  # a Transpose may have none
        w.shape = ir.Shape([outputs, self.weight.size // outputs])  # [outputs, inputs], read by the rewrites
        tile = analog_node("AnalogTile", [x, w, *controls], attributes,
                           name=self.names.node(f"{self.base}/analog_tile"), role="tile")
        tile.outputs[0].name = self.names.value(f"{self.base}/analog_tile")
        if kind == "Gemm":  # a Gemm's input is a matrix: so is the tile's output (the epilogue fusion reads it)
            tile.outputs[0].type, tile.outputs[0].shape = w.type, ir.Shape([None, outputs])
        tile.metadata_props[LAYER_KEY] = self.base
        self.graph.insert_after(self.last, tile)
        self.last, y = tile, tile.outputs[0]
        if kind == "Conv":
            y = self.add("Transpose", [y], {"perm": [0, 3, 1, 2]}, "nchw")
        bias = layer.inputs[2] if len(layer.inputs) > 2 else None
        if bias is not None:
            if kind == "Conv":
                bias = self.add("Reshape", [bias, self.constant(np.array([-1, 1, 1], np.int64), "bias_shape")],
                                what="bias_column")
            elif _float(layer, "beta", 1.0) != 1.0:
                bias = self.add("Mul", [bias, self.constant(np.array(_float(layer, "beta", 1.0), np.float32), "beta")],
                                what="bias_beta")
            y = self.add("Add", [y, bias], what="bias")
        self._take_over(y)

    def _one_hot(self) -> ir.Value:
        """Kernel of the unfolding Conv: output channel (c, i, j) copies input channel c at (i, j).
        It is built at run time (EyeLike of an [n, n] zero matrix, reshaped), since as a constant
        its (C*kh*kw)^2 floats would be most of the file (9x a ResNet-18)."""
        _, channels, kh, kw = self.weight.shape
        n = channels * kh * kw
        zeros = self.add("ConstantOfShape", [self.constant(np.array([n, n], np.int64), "unfold_size")],
                         {"value": ir.tensor(np.zeros(1, np.float32))}, "unfold_zeros")
        eye = self.add("EyeLike", [zeros], what="unfold_eye")
        return self.add("Reshape", [eye, self.constant(np.array([n, channels, kh, kw], np.int64), "unfold_shape")],
                        what="unfold_kernel")

    def _conv_attributes(self) -> dict:
        keep = ("auto_pad", "dilations", "pads", "strides")
        return {name: attr.value for name, attr in self.layer.attributes.items() if name in keep}

    def _take_over(self, y: ir.Value) -> None:
        """Consumers of the layer's output read ``y``; a graph output keeps its name."""
        old = self.layer.outputs[0]
        if take_over(old, y):
            old.name = self.names.value(f"{site_name(self.layer)}/digital")
        y.type, y.shape = old.type, old.shape
        self.last.metadata_props[REPLACES_KEY] = old.name or ""


def restore_layers(graph: ir.Graph, inserted: list[ir.Node]) -> None:
    """Strip: consumers of each tile chain read the layer it replaced again (one index of the values
    original nodes produce, so strip stays linear in the size of the graph)."""
    chains = [node for node in inserted if REPLACES_KEY in node.metadata_props]
    if not chains:
        return
    original = {v.name: v for n in graph if not is_inserted(n) for v in n.outputs if v.name}
    for last in chains:
        name = last.metadata_props[REPLACES_KEY]
        layer_output = original.get(name)
        if layer_output is None:
            raise ModelError(f"node {last.name!r} says it replaces {name!r} ({REPLACES_KEY}), which no original "
                             "node of the graph computes: the file was edited; transform the original model again")
        take_over(last.outputs[0], layer_output)
