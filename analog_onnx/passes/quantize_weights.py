"""Pass: quantize the weights of analog layers (``weights.bits``).

Rule:

1. The sites are the analog layers with a constant weight among ``find_sites`` under the config
   (restricted to ``only`` when given).
2. Each weight goes through ``ai.analog.Quantize`` (signed, symmetric, dynamic abs-max scale,
   bound 1), per output channel or per tensor; the layer reads the result.
3. Output channels that do not lie on axis 0 (MatMul, Gemm without transB, ConvTranspose) are
   brought there by a Transpose and back after.
4. The original initializer stays untouched, so ``strip`` gives it back; onnxruntime folds the
   function body to constants at session start.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx_ir as ir

from analog_onnx.passes.common import EffectPass, analog_node, tag
from analog_onnx.passes.names import Names
from analog_onnx.passes.sites import WEIGHT_INPUT, Site, find_sites


def channel_axis(node: ir.Node, rank: int) -> int | None:
    """The axis of the weight holding output channels, or None when only per-tensor makes sense."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        trans_b = node.attributes["transB"].as_int() if "transB" in node.attributes else 0
        return 0 if trans_b else 1
    return 1 if rank == 2 else None  # MatMul [K, N]


class QuantizeWeightsPass(EffectPass):

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        sites = [s for s in find_sites(model.graph, self.config, self.only) if s.weight is not None]
        names = Names(model)
        for site in sites:
            self._quantize(model.graph, site, names)
        return ir.passes.PassResult(model, modified=bool(sites))

    def _quantize(self, graph: ir.Graph, site: Site, names: Names) -> None:
        weights = self.config.weights
        axis = channel_axis(site.node, site.weight.ndim) if weights.per_channel else None
        attributes = {"bits": weights.bits, "bound": 1.0, "signed": 1, "dynamic": 1,
                      "axis": 0 if axis is None else 1}
        wrap_weight(graph, site, names, axis, "w", lambda source: analog_node(
            "Quantize", [source], attributes, name=names.node(f"{site.name}/analog_wq"), role="weight_quant"))


def wrap_weight(graph: ir.Graph, site: Site, names: Names, axis: int | None, short: str,
                make: Callable[[ir.Value], ir.Node]) -> ir.Node:
    """Make the layer read ``make(weight)``'s first output instead of its weight, with the output
    channels brought to axis 0 for ``make`` (a Transpose before and after) when ``axis`` is another
    axis. Inserted values are named ``SITE/analog_{short}0, 1, ...``; returns ``make``'s node."""
    node, index = site.node, WEIGHT_INPUT[site.op_type]
    perm = None
    if axis:
        perm = list(range(site.weight.ndim))
        perm[0], perm[axis] = axis, 0
    chain: list[ir.Node] = []
    source = node.inputs[index]
    if perm:
        name = names.node(f"{site.name}/analog_{short}t")
        chain.append(tag(ir.node("Transpose", [source], {"perm": perm}, name=name), "transpose"))
        source = chain[-1].outputs[0]
    made = make(source)
    chain.append(made)
    if perm:
        chain.append(tag(ir.node("Transpose", [made.outputs[0]], {"perm": perm},
                                 name=names.node(f"{site.name}/analog_{short}t_back")), "transpose"))
    for i, step in enumerate(chain):
        step.outputs[0].name = names.value(f"{site.name}/analog_{short}{i}")
    graph.insert_before(node, chain)
    node.replace_input_with(index, chain[-1].outputs[0])
    return made
