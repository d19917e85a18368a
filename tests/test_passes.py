"""One small test per pass on a hand-built graph, and names that never clash."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
from helpers import as_ir, gemm_relu
from onnx import TensorProto, numpy_helper
from onnx import helper as h

from analog_onnx.config import PLACEMENTS, load_preset
from analog_onnx.effects import EFFECTS, enabled_effects
from analog_onnx.errors import ConfigError
from analog_onnx.ops import DOMAIN
from analog_onnx.ops import reference as ref
from analog_onnx.passes.add_controls import CONTROLS, AddControlInputsPass
from analog_onnx.passes.add_functions import AddAnalogFunctionsPass
from analog_onnx.passes.common import CONFIG_KEY, INPUTS_KEY, SITES_KEY, VERSION_KEY, control_inputs
from analog_onnx.passes.insert_activation_noise import InsertActivationNoisePass
from analog_onnx.passes.insert_analog_tile import InsertAnalogTilePass
from analog_onnx.passes.insert_device_weights import InsertDeviceWeightsPass
from analog_onnx.passes.insert_mvm_periphery import InsertMvmPeripheryPass
from analog_onnx.passes.name_nodes import NameNodesPass
from analog_onnx.passes.names import Names
from analog_onnx.passes.quantize_weights import QuantizeWeightsPass
from analog_onnx.passes.sites import find_sites
from analog_onnx.passes.strip_analog import StripAnalogPass
from analog_onnx.passes.write_metadata import WriteMetadataPass
from analog_onnx.transform import read_analog_metadata, strip_model, transform_model


def with_controls(model: onnx.ModelProto, t_inference: float = 0.0) -> ir.Model:
    work = as_ir(model)
    AddControlInputsPass(t_inference)(work)
    return work


def ops(model: ir.Model) -> list[str]:
    return [n.op_type for n in model.graph]


def test_controls_pass_adds_four_scalars_with_defaults_and_free_names():
    work = with_controls(gemm_relu(names={"x": "seed", "h": "noise_scale"}), t_inference=3600.0)
    names = json.loads(work.metadata_props[INPUTS_KEY])
    assert list(names) == list(CONTROLS)
    assert names == {"noise_scale": "noise_scale_1", "seed": "seed_1", "chip_seed": "chip_seed",
                     "t_inference": "t_inference"}
    defaults = {c: work.graph.initializers[names[c]].const_value.numpy() for c in CONTROLS}
    assert defaults == {"noise_scale": 1.0, "seed": -1, "chip_seed": -1, "t_inference": 3600.0}
    assert [defaults[c].dtype for c in CONTROLS] == [np.float32, np.int64, np.int64, np.float32]
    with pytest.raises(ir.passes.PreconditionError):
        AddControlInputsPass()(work)


def test_activation_noise_pass_needs_controls_and_numbers_its_streams():
    config = load_preset("hardening-additive")
    with pytest.raises(ir.passes.PreconditionError):
        InsertActivationNoisePass(config)(as_ir(gemm_relu()))
    work = with_controls(gemm_relu())
    InsertActivationNoisePass(config)(work)
    noise = [n for n in work.graph if n.op_type == "Noise"]
    assert [n.name for n in noise] == ["x/analog_noise", "gemm/analog_noise", "relu/analog_noise"]
    assert [n.attributes["stream"].as_int() for n in noise] == [1, 2, 3]
    assert all(n.inputs[1:] == tuple(control_inputs(work, ("noise_scale", "seed"))) for n in noise)
    assert work.graph.outputs[0].producer() is noise[-1] and work.graph.outputs[0].name == "y"
    InsertActivationNoisePass(config, only={"relu"})(work)  # a second pass continues the streams
    assert sorted(n.attributes["stream"].as_int() for n in work.graph if n.op_type == "Noise") == [1, 2, 3, 4]


def test_quantize_weights_pass_transposes_output_channels_to_axis_0():
    config = load_preset("aihwkit-default").with_overrides(["weights.bits=4"])
    work = as_ir(gemm_relu())
    QuantizeWeightsPass(config)(work)  # Gemm with transB=1: channels already on axis 0
    assert ops(work) == ["Quantize", "Gemm", "Relu"]
    model = gemm_relu()
    model.graph.node[0].attribute[0].i = 0
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.ones((4, 3), np.float32), "W"))
    work = as_ir(model)
    QuantizeWeightsPass(config)(work)
    assert ops(work) == ["Transpose", "Quantize", "Transpose", "Gemm", "Relu"]
    assert work.graph.node(3).inputs[1].name == "gemm/analog_w2"


def gemm_alpha_relu() -> onnx.ModelProto:
    """``gemm_relu`` with alpha 2: a layer the tile pass leaves to the periphery pass."""
    model = gemm_relu()
    model.graph.node[0].attribute.append(h.make_attribute("alpha", 2.0))
    return model


def test_mvm_periphery_pass_wraps_the_layer_and_moves_the_bias_out():
    config = load_preset("aihwkit-default")
    work = with_controls(gemm_alpha_relu())
    InsertMvmPeripheryPass(config)(work)
    assert ops(work) == ["MvmInput", "Gemm", "MvmOutput", "Add", "Relu"]
    gemm = work.graph.node(1)
    assert len(gemm.inputs) < 3 or gemm.inputs[2] is None
    out = work.graph.node(2)
    assert out.attributes["stream"].as_int() == 1
    weight = numpy_helper.to_array(gemm_relu().graph.initializer[0])
    assert out.attributes["weight_scale"].as_float() == pytest.approx(2 * np.abs(weight).max())


def test_analog_tile_pass_replaces_the_layer_and_adds_the_bias_after():
    config = load_preset("aihwkit-default")
    work = with_controls(gemm_relu())
    InsertMvmPeripheryPass(config)(work)
    assert ops(work) == ["Gemm", "Relu"]  # a tile layer: not the periphery pass's
    InsertAnalogTilePass(config)(work)
    assert ops(work) == ["Gemm", "AnalogTile", "Add", "Relu"]
    tile = work.graph.node(1)
    assert tile.attributes["bm_rounds"].as_int() == 5 and tile.attributes["max_input_size"].as_int() == 512
    assert not work.graph.node(0).outputs[0].uses()  # the layer stays for strip, unused
    StripAnalogPass()(work)
    assert ops(work) == ["Gemm", "Relu"] and work.graph.node(1).inputs[0] is work.graph.node(0).outputs[0]


def test_weight_noise_reaches_the_tile_and_refuses_layers_outside_tiles(rng):
    """forward.w_noise is an AnalogTile attribute; a layer left to the periphery (here a grouped
    Conv) cannot model it and is refused by name, before the graph changes."""
    config = load_preset("aihwkit-default").with_overrides(["w_noise=0.03"])
    work = with_controls(gemm_relu())
    InsertAnalogTilePass(config)(work)
    assert work.graph.node(1).attributes["w_noise"].as_float() == pytest.approx(0.03)
    weight = rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
    graph = h.make_graph([h.make_node("Conv", ["x", "w"], ["y"], name="depthwise", group=4)], "conv",
                         [h.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 7, 6])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                         [numpy_helper.from_array(weight, "w")])
    work = with_controls(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]))
    with pytest.raises(ConfigError, match=r"w_noise is modelled on analog tiles only, and layer depthwise \(Conv\)"):
        InsertMvmPeripheryPass(config)(work)
    assert ops(work) == ["Conv"]
    InsertMvmPeripheryPass(load_preset("aihwkit-default"))(work)
    assert ops(work) == ["MvmInput", "Conv", "MvmOutput"]


def test_analog_tile_pass_unfolds_a_convolution_into_patches(rng):
    weight = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    graph = h.make_graph([h.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 0, 1, 0], strides=[2, 1])],
                         "conv", [h.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 7, 6])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                         [numpy_helper.from_array(weight, "w")])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])
    config = load_preset("aihwkit-default").with_overrides(["out_noise=0", "bound_management=none"])
    transformed = transform_model(model, config)
    assert [n.op_type for n in transformed.graph.node if n.domain == DOMAIN] == ["AnalogTile"]
    x = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
    got = ort.InferenceSession(transformed.SerializeToString()).run(None, {"x": x})[0]
    patches = torch.nn.functional.unfold(torch.from_numpy(x), (3, 3), padding=(1, 0), stride=(2, 1))
    want = ref.analog_tile(patches.transpose(1, 2).numpy(), weight.reshape(4, -1), 0.0, 0, inp_bits=7, out_bits=9,
                           out_bound=12.0, max_input_size=512, max_output_size=512)
    np.testing.assert_allclose(got, want.transpose(0, 2, 1).reshape(got.shape), rtol=1e-5, atol=1e-5)


def test_device_weights_pass_feeds_the_tile_and_compensates_before_the_bias():
    config = load_preset("aihwkit-pcm").with_overrides(["weights.per_channel=true"])
    model = gemm_relu()
    model.graph.node[0].attribute[0].i = 0  # W [inputs, outputs]: the tile reads its transpose
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.ones((4, 3), np.float32), "W"))
    work = with_controls(model)
    InsertAnalogTilePass(config)(work)
    InsertDeviceWeightsPass(config)(work)
    assert ops(work) == ["Gemm", "Transpose", "DeviceWeights", "AnalogTile", "Mul", "Add", "Relu"]
    layer, transpose, device, tile, mul, add, _ = work.graph
    assert not layer.outputs[0].uses() and device.inputs[0] is transpose.outputs[0]
    assert tile.inputs[1] is device.outputs[0] and device.attributes["per_channel"].as_int() == 1
    assert device.outputs[0].shape == ir.Shape([3, 4])  # [outputs, inputs]: output channels on axis 0
    assert mul.inputs == (tile.outputs[0], device.outputs[1]) and add.inputs[0] is mul.outputs[0]
    assert device.attributes["stream"].as_int() == tile.attributes["stream"].as_int() + 1
    StripAnalogPass()(work)
    assert ops(work) == ["Gemm", "Relu"] and work.graph.node(1).inputs[0] is work.graph.node(0).outputs[0]


def test_the_transforms_own_nodes_are_never_sites(rng):
    """A tile's unfolding Conv has a constant kernel, but it is not a layer of the model: the
    passes after the tile pass (devices, and keep_last_digital) must not see it."""
    weight = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    graph = h.make_graph([h.make_node("Conv", ["x", "w"], ["y"], name="conv")], "conv",
                         [h.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 5, 5])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                         [numpy_helper.from_array(weight, "w")])
    config = load_preset("aihwkit-pcm")
    work = with_controls(h.make_model(graph, opset_imports=[h.make_opsetid("", 13)]))
    InsertAnalogTilePass(config)(work)
    assert [s.name for s in find_sites(work.graph, config)] == ["conv"]
    InsertDeviceWeightsPass(config)(work)
    assert [n.op_type for n in work.graph if n.op_type == "DeviceWeights"] == ["DeviceWeights"]


def test_device_weights_pass_feeds_the_layer_and_compensates_after_the_adc():
    config = load_preset("aihwkit-pcm")
    work = with_controls(gemm_alpha_relu())
    with pytest.raises(ir.passes.PreconditionError):
        InsertDeviceWeightsPass(config)(as_ir(gemm_alpha_relu()))
    InsertMvmPeripheryPass(config)(work)
    InsertDeviceWeightsPass(config)(work)
    assert ops(work) == ["MvmInput", "DeviceWeights", "Gemm", "Mul", "MvmOutput", "Add", "Relu"]
    mvm_in, device, gemm, mul, mvm_out = (work.graph.node(i) for i in range(5))
    assert gemm.inputs[1] is device.outputs[0] and mul.inputs == (mvm_in.outputs[1], device.outputs[1])
    assert mvm_out.inputs[1] is mul.outputs[0]  # alpha rescales after the ADC, before the bias
    assert [v.name for v in device.inputs[1:]] == list(CONTROLS)
    assert device.attributes["stream"].as_int() == 2 and device.attributes["device"].as_string() == "pcm"
    uncompensated = with_controls(gemm_relu())
    InsertDeviceWeightsPass(config.with_overrides(["drift_compensation=false", "weights.per_channel=true"]))(
        uncompensated)
    assert ops(uncompensated) == ["DeviceWeights", "Gemm", "Relu"]
    bare = with_controls(gemm_relu())  # no periphery: alpha multiplies the layer's output
    InsertDeviceWeightsPass(config)(bare)
    assert ops(bare) == ["DeviceWeights", "Gemm", "Mul", "Relu"]
    assert uncompensated.graph.node(0).attributes["per_channel"].as_int() == 1


def test_device_weights_pass_brings_matmul_channels_to_axis_0():
    config = load_preset("aihwkit-pcm").with_overrides(["weights.per_channel=true"])
    model = gemm_relu()
    model.graph.node[0].attribute[0].i = 0
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.ones((4, 3), np.float32), "W"))
    work = with_controls(model)
    InsertDeviceWeightsPass(config)(work)
    assert ops(work)[:4] == ["Transpose", "DeviceWeights", "Transpose", "Gemm"]


def test_periphery_still_finds_a_layer_whose_weight_was_quantized():
    config = load_preset("aihwkit-default").with_overrides(["weights.bits=4"])
    work = with_controls(gemm_alpha_relu())
    QuantizeWeightsPass(config)(work)
    InsertMvmPeripheryPass(config)(work)
    assert ops(work) == ["Quantize", "MvmInput", "Gemm", "MvmOutput", "Add", "Relu"]


def test_functions_pass_replaces_our_functions_a_model_already_holds():
    """An export with 16-bit QAT activations carries our Quantize function: the pass leaves one
    definition of each function, the current one."""
    work = with_controls(gemm_relu())
    AddAnalogFunctionsPass()(work)
    assert work.opset_imports[DOMAIN] == 1 and ("ai.analog", "Noise", "") in work.functions
    count = len(work.functions)
    stale = work.functions[("ai.analog", "Noise", "")]
    AddAnalogFunctionsPass()(work)
    assert len(work.functions) == count and work.functions[("ai.analog", "Noise", "")] is not stale


def test_effects_are_a_registry_the_config_switches():
    names = {e.name for e in EFFECTS}
    assert [e.name for e in enabled_effects(load_preset("ideal"))] == []
    assert [e.name for e in enabled_effects(load_preset("hardening-additive"))] == ["activation_noise"]
    assert [e.name for e in enabled_effects(load_preset("aihwkit-default").with_overrides(["weights.bits=4"]))] == \
        ["weight_quantization", "analog_tile", "mvm_periphery"]
    assert [e.name for e in enabled_effects(load_preset("aihwkit-pcm").with_overrides(["weights.bits=4"]))] == \
        ["analog_tile", "mvm_periphery", "device_weights"]  # weight bits become conductance levels
    assert names == {"activation_noise", "weight_quantization", "analog_tile", "mvm_periphery", "device_weights"}
    for effect in EFFECTS:
        assert effect.placement in PLACEMENTS and effect.reads


def test_names_are_free_in_subgraphs_too():
    inner = h.make_graph([h.make_node("Identity", ["x"], ["taken"], name="inner")], "body", [],
                         [h.make_tensor_value_info("taken", TensorProto.FLOAT, None)])
    model = gemm_relu()
    model.graph.node.append(h.make_node("If", ["cond"], ["z"], then_branch=inner, else_branch=inner, name="if"))
    names = Names(as_ir(model))
    assert names.value("taken") == "taken_1" and names.value("taken") == "taken_2"
    assert names.node("inner") == "inner_1" and names.value("fresh") == "fresh"


def hostile_model() -> onnx.ModelProto:
    """Names the transform would pick are already used: as values (in a subgraph too) and nodes."""
    model = gemm_relu(names={"relu": "gemm/analog_noise", "b": "gemm/analog_in/x"})
    inner = h.make_graph([h.make_node("Identity", ["y"], ["h_analog"], name="gemm/analog_out")], "body", [],
                         [h.make_tensor_value_info("h_analog", TensorProto.FLOAT, ["batch", 3])])
    model.graph.node.append(h.make_node("If", ["cond"], ["noise_scale"], then_branch=inner, else_branch=inner,
                                        name="gemm/analog_bias"))
    model.graph.input.append(h.make_tensor_value_info("cond", TensorProto.BOOL, []))
    model.graph.output.append(h.make_tensor_value_info("noise_scale", TensorProto.FLOAT, ["batch", 3]))
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("preset", ["hardening-additive", "aihwkit-default"])
def test_hostile_names_give_a_valid_model_with_the_same_numbers(preset):
    model, config = hostile_model(), load_preset(preset).with_overrides(["weights.bits=4"] if preset[0] == "a" else [])
    transformed = transform_model(model, config)
    onnx.checker.check_model(transformed, full_check=True)
    nodes = [n.name for n in transformed.graph.node]
    assert len(set(nodes)) == len(nodes)
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    feeds = {"x": x, "cond": np.array(True)}
    plain = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    meta = read_analog_metadata(transformed)
    session = ort.InferenceSession(transformed.SerializeToString(), providers=["CPUExecutionProvider"])
    quiet = session.run(None, {**feeds, meta.noise_scale_input: np.array(0.0, np.float32)})
    np.testing.assert_allclose(quiet[0], plain[0], rtol=0.2, atol=0.2)
    assert [o.name for o in transformed.graph.output] == ["y", "noise_scale"]
    same_model = ir.serde.serialize_model(as_ir(model))  # onnx_ir adds value_info for initializers
    assert strip_model(transformed).SerializeToString() == same_model.SerializeToString()


def test_name_nodes_pass_gives_every_node_a_name_of_its_own():
    model = gemm_relu(names={"relu": "gemm"})
    model.graph.node.append(h.make_node("Identity", ["y"], ["h_1"]))  # unnamed: named after its output
    model.graph.node.append(h.make_node("Identity", ["y"], ["gemm"]))  # its output's name is a node's
    model.graph.node.append(h.make_node("Identity", ["y"], []))
    work = as_ir(model)
    with pytest.raises(ir.passes.PreconditionError, match="Relu node 'gemm' has no name of its own"):
        InsertActivationNoisePass(load_preset("hardening-additive"))(with_controls(model))
    assert NameNodesPass()(work).modified and not NameNodesPass()(work).modified
    assert [n.name for n in work.graph] == ["gemm", "gemm_1", "h_1", "gemm_2", "Identity"]


def test_duplicate_node_names_in_the_model_get_distinct_inserted_names():
    model = gemm_relu(names={"relu": "gemm"})
    transformed = transform_model(model, load_preset("hardening-additive"))
    added = [n.name for n in transformed.graph.node if n.domain == DOMAIN]
    assert added == ["x/analog_noise", "gemm/analog_noise", "gemm_1/analog_noise"]
    assert read_analog_metadata(transformed).sites == ["x", "gemm", "gemm_1"]
    values = [o for n in transformed.graph.node for o in n.output]
    assert len(set(values)) == len(values)


def test_metadata_pass_records_config_version_and_sites():
    config = load_preset("aihwkit-default")
    work = as_ir(gemm_relu())
    WriteMetadataPass(config, {"gemm"})(work)
    assert json.loads(work.metadata_props[CONFIG_KEY]) == config.to_dict()
    assert json.loads(work.metadata_props[SITES_KEY]) == ["gemm"] and work.metadata_props[VERSION_KEY]


@pytest.mark.parametrize(("preset", "passes"), [
    ("aihwkit-default", (QuantizeWeightsPass, InsertAnalogTilePass)),
    ("aihwkit-pcm", (InsertAnalogTilePass, InsertDeviceWeightsPass)),
    ("aihwkit-pcm", (InsertMvmPeripheryPass, InsertDeviceWeightsPass)),
], ids=["tiles", "devices on tiles", "devices"])
def test_strip_pass_removes_what_the_other_passes_added(preset, passes):
    config = load_preset(preset).with_overrides(["weights.bits=4"])
    work = with_controls(gemm_relu() if InsertAnalogTilePass in passes else gemm_alpha_relu())
    for make_pass in passes:
        assert make_pass(config)(work).modified
    AddAnalogFunctionsPass()(work)
    WriteMetadataPass(config, {"gemm"})(work)
    StripAnalogPass()(work)
    assert ops(work) == ["Gemm", "Relu"] and len(work.graph.node(0).inputs) == 3
    assert [v.name for v in work.graph.inputs] == ["x"] and set(work.graph.initializers) == {"W", "b"}
    assert not work.functions and DOMAIN not in work.opset_imports and not work.metadata_props
