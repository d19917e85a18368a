"""Pass: the periphery of analog matrix-vector products ("mvm" placement, aihwkit's model).

Rule, for each analog layer ``Y = Layer(X, W, b)`` among ``find_sites`` under the config
(restricted to ``only`` when given) that ``InsertAnalogTilePass`` does not make a tile, in graph order:

- ``X`` goes through ``MvmInput`` (abs-max noise management, DAC); the layer reads the
  normalized ``Xn``. Rows are per sample for Conv/Gemm (axis 1) and per vector for MatMul (axis -1).
- ``Y`` goes through ``MvmOutput`` (output noise, ADC, rescale by ``S`` and the weight scale
  ``w = max|W|``, times ``|alpha|`` for Gemm), so noise and ADC bounds are in normalized units.
- A constant bias is digital: it leaves the layer and is added after ``MvmOutput`` (reshaped
  for Conv, times ``beta`` for Gemm, by tagged nodes). A computed bias stays inside the layer.
- For a MatMul of two activations, the second operand is normalized per tensor like a weight
  array and its scale multiplied back after ``MvmOutput``.
- ``MvmOutput`` reads the ``noise_scale`` and ``seed`` controls and draws its own stream (the
  next free one in the graph, in site order).
- ``forward.w_noise`` (the weights' read noise) is modelled by tiles only: a layer here under a
  config that sets it is refused (``MvmOutput`` never sees the input vector that scales it).
- A MatMul with a vector weight ``w[K]`` (one output per input vector, its last axis dropped), or
  a second operand known to be a vector, reads it as the column ``[K, 1]``, so ``Y`` has a row per
  input vector like ``X``; a Squeeze after the periphery drops the axis again.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from analog_onnx.config import AnalogConfig
from analog_onnx.errors import ConfigError, ModelError
from analog_onnx.passes.common import (
    ROLE_KEY,
    EffectPass,
    analog_node,
    control_inputs,
    is_inserted,
    next_stream,
    splice_after,
    tag,
    upstream,
)
from analog_onnx.passes.insert_analog_tile import is_tile_layer
from analog_onnx.passes.names import Names
from analog_onnx.passes.sites import Site, constant_array, find_sites, site_name

CONTROLS = ("noise_scale", "seed")

BIAS_INPUT = {"Conv": 2, "ConvTranspose": 2, "Gemm": 2}


def refuse_weight_noise(config: AnalogConfig, layer: str, op_type: str) -> None:
    """Refuse a layer that is no tile under a config with weight read noise, naming it."""
    if config.forward.w_noise:
        raise ConfigError(f"forward.w_noise is modelled on analog tiles only, and layer {layer} ({op_type}) is none "
                          "(tiles: Gemm, MatMul of a 2-D weight, 2-D Conv with group 1); set forward.w_noise = 0 "
                          "or exclude the layer (placement.exclude)")


def rows_axis(op_type: str) -> int:
    return -1 if op_type == "MatMul" else 1


def _attr(node: ir.Node, name: str, default: float) -> float:
    return node.attributes[name].value if name in node.attributes else default


class InsertMvmPeripheryPass(EffectPass):
    controls = CONTROLS

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        sites = [s for s in find_sites(graph, self.config, self.only) if not is_tile_layer(s)]
        controls, names, first = control_inputs(model, CONTROLS), Names(model), next_stream(graph)
        for site in sites:
            refuse_weight_noise(self.config, site.name, site.op_type)
        for index, site in enumerate(sites):
            self._wrap(graph, site, controls, names, first + index)
        return ir.passes.PassResult(model, modified=bool(sites))

    def _mvm_input(self, graph: ir.Graph, node: ir.Node, index: int, axis: int, name: str, names: Names) -> ir.Value:
        f = self.config.forward
        attributes = {"inp_bits": f.inp_bits, "inp_bound": f.inp_bound,
                      "noise_management": int(f.noise_management == "abs_max"), "axis": axis}
        source = node.inputs[index]
        mvm_in = analog_node("MvmInput", [source], attributes, name=names.node(name), role="mvm_input", num_outputs=2)
        mvm_in.outputs[0].name = names.value(f"{mvm_in.name}/x")
        mvm_in.outputs[1].name = names.value(f"{mvm_in.name}/scale")
        mvm_in.outputs[0].type, mvm_in.outputs[1].type = source.type, source.type
        graph.insert_before(node, mvm_in)
        node.replace_input_with(index, mvm_in.outputs[0])
        return mvm_in.outputs[1]

    def _wrap(self, graph: ir.Graph, site: Site, controls: list[ir.Value], names: Names, stream: int) -> None:
        node, f = site.node, self.config.forward
        axis = rows_axis(node.op_type)
        y_shape = node.outputs[0].shape
        operand = node.inputs[1].shape
        vector = site.weight.ndim == 1 if site.weight is not None else operand is not None and len(operand) == 1
        column = _as_column(graph, node, names, f"{site.name}/analog_column") if vector else None
        scale = self._mvm_input(graph, node, 0, axis, f"{site.name}/analog_in", names)
        operand_scale = None
        if site.weight is None:  # MatMul of two activations
            operand_scale = self._mvm_input(graph, node, 1, 0, f"{site.name}/analog_operand", names)
            weight_scale = 1.0
        else:
            peak = float(np.abs(site.weight).max()) * abs(_attr(node, "alpha", 1.0))
            weight_scale = peak if peak > 0 else 1.0
        bias = self._take_bias(graph, site, names)

        attributes = {"weight_scale": weight_scale, "out_noise": f.out_noise, "out_bits": f.out_bits,
                      "out_bound": f.out_bound if f.out_bound > 0 else math.inf, "axis": axis,
                      "stream": stream}
        y = node.outputs[0]
        mvm_out = analog_node("MvmOutput", [y, scale, *controls], attributes,
                              name=names.node(f"{site.name}/analog_out"), role="mvm_output")
        splice_after(graph, y, mvm_out, names)
        last = mvm_out
        if operand_scale is not None:
            last = self._append(graph, last, "Mul", operand_scale, f"{site.name}/analog_operand_scale", "scale", names)
        if column is not None:  # the axis the column added goes (a MatMul has no bias)
            mvm_out.outputs[0].shape = last.outputs[0].shape = None
            last = self._append(graph, last, "Squeeze", column, f"{site.name}/analog_squeeze", "weight_column", names)
            last.outputs[0].shape = y_shape
        if bias is not None:
            self._append(graph, last, "Add", bias, f"{site.name}/analog_bias", "bias", names)
            node.replace_input_with(BIAS_INPUT[node.op_type], None)

    @staticmethod
    def _append(graph: ir.Graph, after: ir.Node, op_type: str, operand: ir.Value, name: str, role: str,
                names: Names) -> ir.Node:
        node = tag(ir.node(op_type, [after.outputs[0], operand], name=names.node(name)), role)
        splice_after(graph, after.outputs[0], node, names)
        return node

    @staticmethod
    def _take_bias(graph: ir.Graph, site: Site, names: Names) -> ir.Value | None:
        """The layer's constant bias, shaped to add to its output (None: keep the bias inside).

        The original bias value feeds the new nodes, so nothing is copied and strip can put it back.
        """
        node = site.node
        index = BIAS_INPUT.get(node.op_type)
        if index is None or len(node.inputs) <= index or node.inputs[index] is None:
            return None
        bias = node.inputs[index]
        if constant_array(bias) is None:
            return None
        if node.op_type == "Gemm":
            beta = _attr(node, "beta", 1.0)
            return bias if beta == 1.0 else _constant_step(graph, node, "Mul", bias, np.float32(beta), "beta", names)
        shape = np.array([-1] + [1] * (site.weight.ndim - 2), dtype=np.int64)
        return _constant_step(graph, node, "Reshape", bias, shape, "bias_shape", names)


def _constant(graph: ir.Graph, layer: ir.Node, array: np.ndarray, base: str, names: Names) -> ir.Value:
    """A tagged Constant holding ``array``, inserted before ``layer``."""
    name = names.value(base)
    constant = tag(ir.node("Constant", [], {"value": ir.tensor(array, name=name)}, name=names.node(base)), "constant")
    constant.outputs[0].name = name
    graph.insert_before(layer, constant)
    return constant.outputs[0]


def _as_column(graph: ir.Graph, layer: ir.Node, names: Names, base: str) -> ir.Value:
    """The MatMul ``layer`` reads its vector weight as a column ``[K, 1]`` (its output's shape is
    then unknown: one more axis); returns the axes added, ``[-1]``."""
    axes = _constant(graph, layer, np.array([-1], np.int64), f"{base}_axes", names)
    unsqueeze = tag(ir.node("Unsqueeze", [layer.inputs[1], axes], name=names.node(base)), "weight_column")
    unsqueeze.outputs[0].name = names.value(base)
    graph.insert_before(layer, unsqueeze)
    layer.replace_input_with(1, unsqueeze.outputs[0])
    layer.outputs[0].shape = None
    return axes


def _constant_step(graph: ir.Graph, layer: ir.Node, op_type: str, value: ir.Value, operand: np.ndarray,
                   what: str, names: Names) -> ir.Value:
    """``op_type(value, operand)`` inserted before ``layer``, tagged so strip removes it."""
    base = f"{site_name(layer)}/analog_{what}"
    constant_name = names.value(f"{base}_value")
    constant = ir.node("Constant", [], {"value": ir.tensor(operand, name=constant_name)},
                       name=names.node(f"{base}_value"))
    step = tag(ir.node(op_type, [value, constant.outputs[0]], name=names.node(base)), "bias")
    constant.outputs[0].name, step.outputs[0].name = constant_name, names.value(base)
    tag(constant, "bias")
    graph.insert_before(layer, [constant, step])
    return step.outputs[0]


def restore_biases(graph: ir.Graph, inserted: list[ir.Node]) -> None:
    """Strip: each layer under a bias Add gets its original bias input back."""
    for add in inserted:
        if add.metadata_props.get(ROLE_KEY) != "bias" or add.op_type != "Add":
            continue
        layer = upstream(add.inputs[0]).producer()
        if layer is not None and layer.op_type in BIAS_INPUT and not is_inserted(layer):
            index = BIAS_INPUT[layer.op_type]
            if len(layer.inputs) <= index or layer.inputs[index] is not None:
                raise ModelError(f"node {add.name!r} is marked as the bias of {layer.name!r}, which has no free bias "
                                 "input: the file was edited; transform the original model again")
            layer.replace_input_with(index, upstream(add.inputs[1]))
