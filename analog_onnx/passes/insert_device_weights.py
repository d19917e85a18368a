"""Pass: the weights of analog layers are conductances on a chip (``[device]``, "mvm" placement).

Rule, for each analog layer with a constant weight among ``find_sites`` under the config
(restricted to ``only`` when given), in graph order:

1. The weight goes through ``ai.analog.DeviceWeights`` (mapping to conductance pairs, levels for
   ``weights.bits``, programming, stuck devices, drift, read noise), which reads the
   ``noise_scale``, ``seed``, ``chip_seed`` and ``t_inference`` controls; the layer reads ``W_read``.
   A layer ``InsertAnalogTilePass`` made a tile is computed by its ``AnalogTile``, so there the
   tile's ``W`` (``[outputs, inputs]``) goes through the op instead.
2. With ``weights.per_channel`` each output channel has its own conductance scale; output channels
   not on axis 0 (MatMul, Gemm without transB, ConvTranspose) are brought there by a Transpose
   and back after.
3. With ``drift_compensation`` the layer's output is multiplied by the op's ``alpha`` after the ADC
   and before the digital bias, as aihwkit's global drift compensation scales the tile's digital
   output: by a Mul right after the ``AnalogTile``, through the rescaling input ``S`` of the
   layer's ``MvmOutput``, or by a Mul after a layer with neither.
4. Each layer draws its own streams, keyed by the op's ``stream``: the next free one, in site order.
5. The original initializer stays untouched, so ``strip`` gives it back.
"""

from __future__ import annotations

import onnx_ir as ir

from analog_onnx.config import AnalogConfig
from analog_onnx.devices.config import CONFIG_KEYS
from analog_onnx.passes.common import EffectPass, analog_node, control_inputs, next_stream, splice_after, tag
from analog_onnx.passes.insert_analog_tile import tiles_by_layer
from analog_onnx.passes.names import Names
from analog_onnx.passes.quantize_weights import channel_axis, wrap_weight
from analog_onnx.passes.sites import Site, find_sites

CONTROLS = ("noise_scale", "seed", "chip_seed", "t_inference")


def device_attributes(config: AnalogConfig) -> dict[str, int | float | str]:
    """The DeviceWeights attributes ``config`` describes (the device by name, booleans as 0/1),
    stream and layout aside."""
    d = config.device
    values = {key: int(v) if isinstance(v := getattr(d, key), bool) else v for key in CONFIG_KEYS}
    return {"device": d.model, **values, "bits": config.weights.bits}


class InsertDeviceWeightsPass(EffectPass):
    controls = CONTROLS

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        sites = [s for s in find_sites(graph, self.config, self.only) if s.weight is not None]
        controls, names, first = control_inputs(model, CONTROLS), Names(model), next_stream(graph)
        tiles = tiles_by_layer(graph)
        for index, site in enumerate(sites):
            self._place(graph, site, tiles.get(site.name), controls, names, first + index)
        return ir.passes.PassResult(model, modified=bool(sites))

    def _place(self, graph: ir.Graph, site: Site, tile: ir.Node | None, controls: list[ir.Value], names: Names,
               stream: int) -> None:
        per_channel = self.config.weights.per_channel
        axis = (0 if tile is not None else channel_axis(site.node, site.weight.ndim)) if per_channel else None
        attributes = {**device_attributes(self.config), "per_channel": int(axis is not None), "stream": stream}

        def make(source: ir.Value) -> ir.Node:
            device = analog_node("DeviceWeights", [source, *controls], attributes, num_outputs=2,
                                 name=names.node(f"{site.name}/analog_device"), role="device_weights")
            device.outputs[1].name = names.value(f"{site.name}/analog_alpha")
            device.outputs[1].type, device.outputs[1].shape = ir.TensorType(ir.DataType.FLOAT), ir.Shape([])
            return device

        if tile is None:
            device = wrap_weight(graph, site, names, axis, "d", make)
        else:  # the tile's W is [outputs, inputs]: output channels already on axis 0
            device = make(tile.inputs[1])
            read, weight = device.outputs[0], tile.inputs[1]
            read.name, read.type, read.shape = names.value(f"{site.name}/analog_d0"), weight.type, weight.shape
            graph.insert_before(tile, device)
            tile.replace_input_with(1, device.outputs[0])
        if self.config.device.drift_compensation:
            self._compensate(graph, site, tile, device.outputs[1], names)

    @staticmethod
    def _compensate(graph: ir.Graph, site: Site, tile: ir.Node | None, alpha: ir.Value, names: Names) -> None:
        """Scale the layer's output by ``alpha``: by a Mul right after its tile, through its
        MvmOutput's rescaling input ``S`` when it has one (``ADC(.) * w * (S * alpha)``: after the
        ADC, one multiply per row, and the output chain stays fusable), else by a Mul after the layer."""
        output = site.node.outputs[0] if tile is None else tile.outputs[0]
        periphery = [user for user, _ in output.uses() if user.op_type == "MvmOutput"]
        name = names.node(f"{site.name}/analog_compensation")
        if periphery:
            mvm_out = periphery[0]
            scale = tag(ir.node("Mul", [mvm_out.inputs[1], alpha], name=name), "drift_compensation")
            scale.outputs[0].name = names.value(name)
            graph.insert_before(mvm_out, scale)
            mvm_out.replace_input_with(1, scale.outputs[0])
            return
        scale = tag(ir.node("Mul", [output, alpha], name=name), "drift_compensation")
        splice_after(graph, output, scale, names)
