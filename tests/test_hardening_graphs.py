"""Unusual graphs transform into models that run, and strip gives them back: vector and empty
weights, blocked quantized weights, scalar inputs, inputs that are outputs, float16 models,
stale or edited marks of ours; strip stays linear in the graph's size."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, numpy_helper
from onnx import helper as h

from analog_onnx.commands.model_commands import describe
from analog_onnx.config import load_preset
from analog_onnx.errors import ModelError
from analog_onnx.evaluate import RunSettings, evaluate
from analog_onnx.runtime import make_session
from analog_onnx.transform import analog_sites, read_analog_metadata, strip_model, transform_model

NATIVE = pytest.param(True, marks=pytest.mark.native, id="native")
ENGINES = [pytest.param(False, id="function"), NATIVE]
PRESETS = ["aihwkit-default", "aihwkit-pcm", "aihwkit-lightning", "hardening-additive"]


def model(nodes: list, inputs: list, outputs: list, initializers: list = (), opset: int = 17) -> onnx.ModelProto:
    graph = h.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])


def value(name: str, shape: list | None) -> onnx.ValueInfoProto:
    return h.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def matmul(weight: np.ndarray, x_shape: list, y_shape: list) -> onnx.ModelProto:
    return model([h.make_node("MatMul", ["x", "w"], ["y"], name="mm")], [value("x", x_shape)], [value("y", y_shape)],
                 [numpy_helper.from_array(weight, "w")])


def structure(proto: onnx.ModelProto) -> tuple:
    """What strip must give back: the nodes, the graph's inputs and outputs."""
    graph = proto.graph
    return ([(n.op_type, list(n.input), list(n.output)) for n in graph.node], [v.name for v in graph.input],
            [v.name for v in graph.output])


def runs(analog: onnx.ModelProto, feeds: dict, native: bool) -> np.ndarray:
    return make_session(analog, native=native).run(None, feeds)[0]


@pytest.mark.parametrize("native", ENGINES)
@pytest.mark.parametrize("preset", PRESETS)
def test_a_matmul_with_a_vector_weight_runs_and_strips_back(preset, native):
    rng = np.random.default_rng(0)
    original = matmul(rng.standard_normal(6).astype(np.float32), ["n", 6], ["n"])
    analog = transform_model(original, load_preset(preset))
    assert len(read_analog_metadata(analog).sites) >= 1
    x = rng.standard_normal((5, 6)).astype(np.float32)
    clean = make_session(original, native=False).run(None, {"x": x})[0]
    y = runs(analog, {"x": x, "noise_scale": np.array(0.0, np.float32)}, native)
    assert y.shape == clean.shape == (5,)
    np.testing.assert_allclose(y, clean, atol=0.05 * np.abs(clean).max())  # no noise: the DAC/ADC grid only
    assert structure(strip_model(analog)) == structure(original)


@pytest.mark.parametrize("native", ENGINES)
def test_a_matmul_with_a_vector_activation_operand_runs(native):
    original = model([h.make_node("MatMul", ["x", "v"], ["y"], name="mm")], [value("x", ["n", 3]), value("v", [3])],
                     [value("y", ["n"])])
    analog = transform_model(original, load_preset("aihwkit-default").with_overrides(["activation_matmul=true"]))
    feeds = {"x": np.ones((2, 3), np.float32), "v": np.array([1, 2, 3], np.float32)}
    y = runs(analog, {**feeds, "noise_scale": np.array(0.0, np.float32)}, native)
    np.testing.assert_allclose(y, [6.0, 6.0], atol=0.1)  # no noise: the DAC/ADC grid only
    assert structure(strip_model(analog)) == structure(original)


@pytest.mark.parametrize("preset", PRESETS)
def test_a_network_input_that_is_also_an_output_keeps_its_name(preset):
    original = model([h.make_node("MatMul", ["x", "w"], ["y"], name="mm")], [value("x", ["n", 3])],
                     [value("y", ["n", 2]), value("x", ["n", 3])], [numpy_helper.from_array(np.ones((3, 2), np.float32),
                                                                                             "w")])
    analog = transform_model(original, load_preset(preset))
    assert analog.graph.input[0].name == "x" and [o.name for o in analog.graph.output] == ["y", "x"]
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    echoed = make_session(analog, native=False).run(["x"], {"x": x})[0]
    np.testing.assert_array_equal(echoed, x)  # the echo is the input, not a noisy copy
    assert structure(strip_model(analog)) == structure(original)


@pytest.mark.parametrize("shape", [(0, 4), (4, 0)], ids=["no inputs", "no outputs"])
@pytest.mark.parametrize("preset", PRESETS)
def test_an_empty_weight_is_no_analog_layer(preset, shape):
    original = matmul(np.ones(shape, np.float32), ["n", shape[0]], ["n", shape[1]])
    analog = transform_model(original, load_preset(preset))
    mvm = load_preset(preset).placement.where == "mvm"
    assert read_analog_metadata(analog).sites == ([] if mvm else read_analog_metadata(analog).sites)
    assert describe(original)["analog_layers"] == []
    y = make_session(analog, native=False).run(None, {"x": np.ones((3, shape[0]), np.float32)})[0]
    assert y.shape == (3, shape[1])


def blocked_weight(rng: np.random.Generator, *, int4: bool) -> tuple[onnx.ModelProto, np.ndarray]:
    """x @ DequantizeLinear(q, s) with one scale per block of 3 rows (opset 21 ``block_size``)."""
    levels = rng.integers(-8, 8, (6, 4))
    q = (h.make_tensor("q", TensorProto.INT4, [6, 4], levels.flatten().tolist()) if int4
         else numpy_helper.from_array(levels.astype(np.int8), "q"))
    scale = rng.uniform(0.1, 1, (2, 4)).astype(np.float32)
    nodes = [h.make_node("DequantizeLinear", ["q", "s"], ["w"], axis=0, block_size=3, name="dq"),
             h.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    proto = model(nodes, [value("x", ["n", 6])], [value("y", ["n", 4])], [q, numpy_helper.from_array(scale, "s")],
                  opset=21)
    return proto, levels * np.repeat(scale, 3, axis=0)


@pytest.mark.parametrize("int4", [False, True], ids=["int8", "int4"])
def test_blocked_dequantized_weights_are_read_per_block(int4):
    rng = np.random.default_rng(0)
    original, weight = blocked_weight(rng, int4=int4)
    [site] = analog_sites(original, load_preset("aihwkit-default"))
    np.testing.assert_allclose(site.weight, weight, rtol=1e-6)
    assert describe(original)["analog_layers"] == [{"name": "mm", "op_type": "MatMul", "weight_shape": [6, 4]}]
    exact = load_preset("aihwkit-default").with_overrides(["out_noise=0", "inp_bits=0", "out_bits=0", "out_bound=0"])
    x = rng.standard_normal((3, 6)).astype(np.float32)
    y = make_session(transform_model(original, exact), native=False).run(None, {"x": x})[0]
    np.testing.assert_allclose(y, x @ weight, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("native", ENGINES)
def test_activation_noise_on_a_scalar_input_runs(native):
    nodes = [h.make_node("Mul", ["x", "s"], ["y"], name="mul"), h.make_node("Relu", ["y"], ["z"], name="relu")]
    original = model(nodes, [value("x", ["n", 3]), value("s", [])], [value("z", ["n", 3])])
    analog = transform_model(original, load_preset("hardening-additive"))
    assert "s" in read_analog_metadata(analog).sites
    feeds = {"x": np.ones((2, 3), np.float32), "s": np.array(2.0, np.float32), "seed": np.array(1, np.int64)}
    assert np.isfinite(runs(analog, feeds, native)).all()
    quiet = runs(analog, {**feeds, "noise_scale": np.array(0.0, np.float32)}, native)
    np.testing.assert_array_equal(quiet, np.full((2, 3), 2.0, np.float32))


def test_a_float16_model_is_refused_by_the_transform_itself(tmp_path):
    half = matmul(np.ones((4, 2), np.float16), ["n", 4], ["n", 2])
    for v in (*half.graph.input, *half.graph.output):
        v.type.tensor_type.elem_type = TensorProto.FLOAT16
    with pytest.raises(ModelError, match="x is float16; analog-onnx transforms float32"):
        transform_model(half, load_preset("hardening-additive"))
    data = tmp_path / "d.npz"
    np.savez(data, x=np.ones((4, 4), np.float32), y=np.zeros(4, np.int64))
    with pytest.raises(ModelError, match="float16"):  # evaluate transforms in memory: the same check
        evaluate(half, f"npz:{data}", config="hardening-additive", settings=RunSettings(repeats=1, seed=0))


def test_original_nodes_with_our_marks_stay_sites_and_survive_strip(caplog):
    original = matmul(np.ones((3, 2), np.float32), ["n", 3], ["n", 2])
    original.graph.node[0].metadata_props.add(key="analog_onnx.role", value="noise")
    original.metadata_props.add(key="analog_onnx.inputs", value="{}")
    analog = transform_model(original, load_preset("aihwkit-default"))
    assert read_analog_metadata(analog).sites == ["mm"]
    assert "carried analog-onnx marks" in caplog.text
    stripped = strip_model(analog)
    assert [n.op_type for n in stripped.graph.node] == ["MatMul"]


def edited(key: str, change) -> onnx.ModelProto:
    """A Gemm transformed with aihwkit-default, one of our marks changed."""
    weights = [numpy_helper.from_array(np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32), "w"),
               numpy_helper.from_array(np.zeros(3, np.float32), "b")]
    original = model([h.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=1)], [value("x", ["n", 4])],
                     [value("y", ["n", 3])], weights)
    analog = transform_model(original, load_preset("aihwkit-default"))
    entries = [p for n in analog.graph.node for p in n.metadata_props if p.key == key] or \
        [p for p in analog.metadata_props if p.key == key]
    for entry in entries:
        entry.value = change(entry.value)
    return analog


@pytest.mark.parametrize(("key", "change", "message"), [
    ("analog_onnx.replaces", lambda _: "nowhere", "replaces 'nowhere'.*no original node"),
    ("analog_onnx.inputs", lambda v: json.dumps({**json.loads(v), "seed": "gone"}), "maps seed -> 'gone'"),
], ids=["replaces", "inputs"])
def test_edited_marks_naming_missing_values_are_one_error(key, change, message):
    analog = edited(key, change)
    with pytest.raises(ModelError, match=message):
        strip_model(analog)
    with pytest.raises(ModelError, match=message):
        evaluate(analog, "digits", settings=RunSettings(repeats=1, seed=0), limit=4)


@pytest.mark.parametrize("preset", PRESETS)
def test_an_original_add_marked_as_a_moved_bias_is_one_error(preset):
    weight = numpy_helper.from_array(np.ones((3, 4), np.float32), "w")
    nodes = [h.make_node("Gemm", ["x", "w"], ["y"], name="fc", transB=1),
             h.make_node("Add", ["y", "c"], ["z"], name="add")]
    original = model(nodes, [value("x", ["n", 4])], [value("z", ["n", 3])],
                     [weight, numpy_helper.from_array(np.ones(3, np.float32), "c")])
    analog = transform_model(original, load_preset(preset))
    next(n for n in analog.graph.node if n.name == "add").metadata_props.add(key="analog_onnx.role", value="bias")
    with pytest.raises(ModelError, match="'add' is marked as the bias of 'fc', which has no free bias input"):
        strip_model(analog)


def test_strip_looks_at_the_graph_a_fixed_number_of_times(monkeypatch):
    """Linear in the graph's size: no walk over every node per tile (tools/bench_graph_size.py)."""
    rng = np.random.default_rng(0)
    nodes, weights, x = [], [], "x"
    for i in range(40):
        weights.append(numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), f"w{i}"))
        nodes.append(h.make_node("MatMul", [x, f"w{i}"], [f"y{i}"], name=f"mm{i}"))
        x = f"y{i}"
    analog = transform_model(model(nodes, [value("x", ["n", 4])], [value(x, ["n", 4])], weights),
                             load_preset("aihwkit-default"))
    walks = 0
    walk = ir.Graph.__iter__

    def counted(graph: ir.Graph):
        nonlocal walks
        walks += 1
        return walk(graph)

    monkeypatch.setattr(ir.Graph, "__iter__", counted)
    assert len(strip_model(analog).graph.node) == 40
    assert walks < 10


def three_layers(names: list[str]) -> onnx.ModelProto:
    """Conv -> Flatten -> Gemm -> two MatMuls, each a graph output; the nodes named ``names``."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
               for name, shape in (("wc", (2, 1, 3, 3)), ("wg", (8, 32)), ("bg", (8,)), ("wm", (8, 3)), ("wn", (8, 3)))]
    nodes = [h.make_node("Conv", ["x", "wc"], ["c"], pads=[1, 1, 1, 1]), h.make_node("Flatten", ["c"], ["f"]),
             h.make_node("Gemm", ["f", "wg", "bg"], ["g"], transB=1), h.make_node("MatMul", ["g", "wm"], ["y"]),
             h.make_node("MatMul", ["g", "wn"], ["z"])]
    for node, name in zip(nodes, names, strict=True):
        node.name = name
    return model(nodes, [value("x", ["n", 1, 4, 4])], [value("y", ["n", 3]), value("z", ["n", 3])], weights)


@pytest.mark.parametrize("native", ENGINES)
@pytest.mark.parametrize("preset", ["aihwkit-pcm", "reram-wan2022"])
@pytest.mark.parametrize("names", [[""] * 5, ["layer"] * 5, ["y", "", "y", "", "z"]],
                         ids=["unnamed", "one name", "outputs' names"])
def test_layers_without_names_of_their_own_get_their_device_weights(preset, names, native):
    """A layer is found by its node's name: an unnamed one lost its device weights once its tile
    renamed its output, and layers named alike chained their DeviceWeights into each other."""
    analog = transform_model(three_layers(names), load_preset(preset))
    tiles = [n for n in analog.graph.node if n.op_type == "AnalogTile"]
    devices = {n.output[0]: n for n in analog.graph.node if n.op_type == "DeviceWeights"}
    assert len(tiles) == len(devices) == 4 and len(set(read_analog_metadata(analog).sites)) == 4
    assert {tile.input[1] for tile in tiles} == set(devices)  # each tile reads its own chip weights
    assert all(device.input[0] not in devices for device in devices.values())
    twin = transform_model(three_layers(["conv", "flatten", "gemm", "mm", "mm2"]), load_preset(preset))
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 1, 4, 4)).astype(np.float32),
             "seed": np.array(3, np.int64), "chip_seed": np.array(4, np.int64)}
    for scale in (0.0, 1.0):  # the same numbers as a model with names of its own, with and without noise
        scaled = {**feeds, "noise_scale": np.array(scale, np.float32)}
        for got, want in zip(make_session(analog, native=native).run(None, scaled),
                             make_session(twin, native=native).run(None, scaled), strict=True):
            np.testing.assert_array_equal(got, want)
    assert structure(strip_model(analog)) == structure(three_layers(names))


def nested_layers(main_layer: bool) -> onnx.ModelProto:
    """x [n, 64] -> the MatMul by w inside both branches of an If and inside a model-local
    function, added up (and, with ``main_layer``, a MatMul of the main graph): digits' shapes."""
    def branch(name: str) -> onnx.GraphProto:
        return h.make_graph([h.make_node("MatMul", ["x", "w"], [f"{name}_y"], name=f"{name}_mm")], name, [],
                            [value(f"{name}_y", ["n", 10])])

    body = [h.make_node("MatMul", ["a", "b"], ["c"], name="inner")]
    function = h.make_function("custom", "Linear", ["a", "b"], ["c"], body, [h.make_opsetid("", 17)])
    nodes = [h.make_node("Constant", [], ["cond"], value=numpy_helper.from_array(np.array(True)), name="cond"),
             h.make_node("If", ["cond"], ["t"], then_branch=branch("then"), else_branch=branch("else"), name="if"),
             h.make_node("Linear", ["x", "w"], ["u"], domain="custom", name="linear"),
             h.make_node("Add", ["t", "u"], ["y"], name="add")]
    if main_layer:
        nodes += [h.make_node("MatMul", ["x", "w"], ["m"], name="mm"), h.make_node("Add", ["y", "m"], ["z"])]
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 10)).astype(np.float32), "w")
    graph = h.make_graph(nodes, "g", [value("x", ["n", 64])], [value("z" if main_layer else "y", ["n", 10])], [weight])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("custom", 1)],
                        functions=[function])


def test_layers_inside_subgraphs_and_functions_are_listed_as_digital_and_never_pass_for_analog(caplog):
    """The transform wrapped none of them and said "0 sites": evaluate then scored the clean model
    at every noise level, as if it were perfectly robust."""
    reasons = {row["name"]: row["reason"] for row in describe(nested_layers(main_layer=False))["digital"]}
    assert reasons == {"then_mm": "inside the then_branch of If node 'if': subgraphs and functions are not transformed",
                       "else_mm": "inside the else_branch of If node 'if': subgraphs and functions are not transformed",
                       "inner": "inside function 'Linear': subgraphs and functions are not transformed"}
    message = "no sites of this config in the main graph; 3 layers inside If/Loop/Scan subgraphs or model-local"
    with pytest.raises(ModelError, match=message):
        transform_model(nested_layers(main_layer=False), load_preset("aihwkit-pcm"))
    with pytest.raises(ModelError, match=message):
        evaluate(nested_layers(main_layer=False), "digits", config="aihwkit-default",
                 settings=RunSettings(repeats=1, seed=0), limit=4)
    analog = transform_model(nested_layers(main_layer=True), load_preset("aihwkit-default"))
    assert read_analog_metadata(analog).sites == ["mm"]
    assert "3 layers inside If/Loop/Scan subgraphs or model-local functions ('else_mm', 'then_mm', 'inner') are " \
           "not supported and stay digital" in caplog.text


def test_evaluating_a_model_without_analog_ops_is_an_error():
    """A transformed file whose config placed nothing would score its clean accuracy at every noise level."""
    analog = transform_model(matmul(np.ones((64, 10), np.float32), ["n", 64], ["n", 10]),
                             load_preset("aihwkit-default").with_placement(exclude=["mm"]))
    assert read_analog_metadata(analog).sites == []
    with pytest.raises(ModelError, match="has no analog ops under config 'aihwkit-default.*no noise to measure"):
        evaluate(analog, "digits", settings=RunSettings(repeats=1, seed=0), limit=4)
