"""The in-memory rewrites of native sessions: same numbers as the graph they replace."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import residual_block
from onnx import TensorProto, numpy_helper
from onnx import helper as h

from analog_onnx.config import load_preset
from analog_onnx.native_graph import fold_constant_quantizers, prepare
from analog_onnx.ops import DOMAIN
from analog_onnx.runtime import make_session, session_options
from analog_onnx.transform import transform_model

pytestmark = pytest.mark.native


def epilogues(model: onnx.ModelProto | None) -> list[dict]:
    """The attributes of the nodes that took an epilogue (an AnalogTileConv only when it is not the identity)."""
    if model is None:
        return []
    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}

    def took_one(node: onnx.NodeProto) -> bool:
        if node.op_type in ("MvmOutputEpilogue", "AnalogTileEpilogue"):
            return True
        if node.op_type != "AnalogTileConv":
            return False
        if node.input[4] not in constants:  # a scale computed at run time (times a drift-compensation factor)
            return True
        relu = any(a.name == "relu" and a.i for a in node.attribute)
        return relu or not (np.all(constants[node.input[4]] == 1) and np.all(constants[node.input[5]] == 0))

    return [{a.name: h.get_attribute_value(a) for a in n.attribute} for n in model.graph.node if took_one(n)]


def run_native(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    """A native session of exactly ``model`` (make_session would rewrite it)."""
    session = ort.InferenceSession(model.SerializeToString(), session_options(native=True),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


@pytest.mark.parametrize("preset", ["aihwkit-default", "aihwkit-pcm", "ideal"])
def test_fused_epilogues_compute_what_the_layers_they_replace_do(preset, rng):
    model = transform_model(residual_block(rng), load_preset(preset))
    fused = prepare(model)
    feeds = {"x": rng.standard_normal((7, 3, 6, 6)).astype(np.float32), "seed": np.array(5, np.int64)}
    if preset == "ideal":  # no analog op, nothing to fuse
        assert fused is model
        return
    if preset == "aihwkit-pcm":
        feeds |= {"chip_seed": np.array(2, np.int64), "t_inference": np.array(3600.0, np.float32)}
    # conv1 takes BN + ReLU; conv2 its bias + BN, then the residual Add and its ReLU; the Gemm its bias + ReLU
    assert [e["relu"] for e in epilogues(fused)] == [1, 1, 1]
    assert not any(n.op_type in ("BatchNormalization", "Add", "Relu") for n in fused.graph.node)
    conv1, conv2 = [n for n in fused.graph.node if n.op_type == "AnalogTileConv"]
    assert len(conv2.input) == 7 and conv2.input[6] == conv1.output[0]
    readers = {name: n.op_type for n in fused.graph.node for name in n.input}
    products = [n for n in fused.graph.node if n.op_type == "Mul"]  # drift compensation: only on the scales
    assert [readers[n.output[0]] for n in products] == (["AnalogTileConv", "AnalogTileConv", "AnalogTileEpilogue"]
                                                       if preset == "aihwkit-pcm" else [])
    unfused = run_native(fold_constant_quantizers(model) or model, feeds)
    np.testing.assert_allclose(run_native(fused, feeds), unfused, rtol=1e-5, atol=1e-5)
    function_bodies = make_session(model, native=False).run(None, feeds)[0]
    np.testing.assert_allclose(make_session(model, native=True).run(None, feeds)[0], function_bodies,
                               rtol=1e-4, atol=1e-4)


def test_fusion_reads_the_structure_not_the_transforms_tags(rng):
    model = transform_model(residual_block(rng), load_preset("aihwkit-default"))
    untagged = onnx.ModelProto()
    untagged.CopyFrom(model)
    for node in untagged.graph.node:
        del node.metadata_props[:]
    assert epilogues(prepare(untagged)) == epilogues(prepare(model))
    assert len(epilogues(prepare(untagged))) == 3


def test_exported_models_fuse_and_agree(exported_models, rng):
    for name, clean in exported_models.items():
        model = transform_model(clean, load_preset("aihwkit-default"))
        fused = prepare(model)
        assert epilogues(fused), name  # TorchScript folds BatchNorm into a Conv bias: bias (+ ReLU) fuse
        feeds = {model.graph.input[0].name: rng.random((5, 3, 4, 4), dtype=np.float32), "seed": np.array(1, np.int64)}
        np.testing.assert_allclose(run_native(fused, feeds), run_native(model, feeds), rtol=1e-5, atol=1e-5)


def test_only_private_per_channel_inference_chains_fuse(rng):
    training = transform_model(residual_block(rng, training_bn=True), load_preset("aihwkit-default"))
    assert [e["relu"] for e in epilogues(prepare(training))] == [0, 1]  # conv1's BN computes batch stats

    model = transform_model(residual_block(rng), load_preset("aihwkit-default"))
    # conv1's output also read elsewhere (a graph output, a branch of an If): that tile stays as it
    # is (conv2 takes its residual Add and ReLU: relu 1)
    shared = next(n.output[0] for n in model.graph.node if n.output[0].endswith("analog_nchw"))
    as_output = onnx.ModelProto()
    as_output.CopyFrom(model)
    as_output.graph.output.append(h.make_tensor_value_info(shared, TensorProto.FLOAT, None))
    assert [e["relu"] for e in epilogues(prepare(as_output))] == [1, 1]

    branch = h.make_graph([h.make_node("Identity", [shared], ["inner"])], "branch", [],
                          [h.make_tensor_value_info("inner", TensorProto.FLOAT, None)])
    model.graph.initializer.append(numpy_helper.from_array(np.array(True), "always"))
    model.graph.node.append(h.make_node("If", ["always"], ["picked"], then_branch=branch, else_branch=branch))
    model.graph.output.append(h.make_tensor_value_info("picked", TensorProto.FLOAT, None))
    fused = prepare(model)
    assert [e["relu"] for e in epilogues(fused)] == [1, 1]
    feeds = {"x": rng.standard_normal((2, 3, 6, 6)).astype(np.float32), "seed": np.array(4, np.int64)}
    for got, want in zip(ort.InferenceSession(fused.SerializeToString(), session_options(native=True)).run(None, feeds),
                         ort.InferenceSession(model.SerializeToString(), session_options(native=True)).run(None, feeds),
                         strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_constant_that_is_not_per_channel_is_not_folded(rng):
    model = transform_model(residual_block(rng), load_preset("aihwkit-default"))
    add = next(n for n in model.graph.node if n.op_type == "Add" and n.input[0].endswith("analog_nchw"))
    row = numpy_helper.from_array(np.full(6, 0.5, np.float32), "per_column")  # broadcasts over W, not C
    model.graph.initializer.append(row)
    add.input[1] = "per_column"
    # the Conv bias step is now a per-column Add: conv2's chain ends before it
    relus = [e["relu"] for e in epilogues(prepare(model))]
    assert len(relus) == 2
    feeds = {"x": rng.standard_normal((2, 3, 6, 6)).astype(np.float32), "seed": np.array(2, np.int64)}
    np.testing.assert_allclose(run_native(prepare(model), feeds), run_native(model, feeds), rtol=1e-5, atol=1e-5)


def test_prepare_leaves_a_model_without_analog_ops_alone(exported_models):
    model = exported_models["mlp"]
    assert prepare(model) is model
    assert not any(n.domain == DOMAIN for n in model.graph.node)



def residual_feeds(rng: np.random.Generator) -> dict:
    return {"x": rng.standard_normal((3, 3, 6, 6)).astype(np.float32), "seed": np.array(4, np.int64)}


def without_residual_fusion(model: onnx.ModelProto, monkeypatch) -> onnx.ModelProto:
    with monkeypatch.context() as patch:
        patch.setattr("analog_onnx.native_graph._fuse_residuals", lambda work: False)
        return prepare(model)


@pytest.mark.parametrize("preset", ["aihwkit-default", "aihwkit-pcm"])
def test_a_fused_residual_gives_the_same_bits_as_the_add_and_relu(preset, rng, monkeypatch):
    model = transform_model(residual_block(rng), load_preset(preset))
    feeds = residual_feeds(rng)
    if preset == "aihwkit-pcm":
        feeds |= {"chip_seed": np.array(2, np.int64), "t_inference": np.array(3600.0, np.float32)}
    fused, unfused = prepare(model), without_residual_fusion(model, monkeypatch)
    assert [n.op_type for n in unfused.graph.node].count("Add") == 1
    assert np.array_equal(run_native(fused, feeds), run_native(unfused, feeds))


def residual_block_with(rng: np.random.Generator, other: str, shape: list, relu: bool = True) -> onnx.ModelProto:
    """residual_block with the residual Add's other summand replaced by graph input ``other`` of
    ``shape`` (and, without ``relu``, the Add's output read by the pooling directly)."""
    model = residual_block(rng)
    add = next(n for n in model.graph.node if n.op_type == "Add")
    add.input[1] = other
    model.graph.input.append(h.make_tensor_value_info(other, TensorProto.FLOAT, shape))
    if not relu:
        model.graph.node.remove(next(n for n in model.graph.node if n.op_type == "Relu" and n.input[0] == "a2"))
        next(n for n in model.graph.node if n.op_type == "GlobalAveragePool").input[0] = "a2"
    return model


@pytest.mark.parametrize(("shape", "fuses"), [(["n", 4, 6, 6], True), ([1, 4, 1, 1], False), ([4, 6, 6], False),
                                              (None, False), (["m", 4, 6, 6], False)])
def test_only_a_summand_proven_of_the_output_shape_joins_the_tile(rng, shape, fuses, monkeypatch):
    """A broadcast summand, or one whose shape inference cannot prove equal (unknown rank, another
    batch name), stays a separate Add: the tile adds R element for element."""
    model = transform_model(residual_block_with(rng, "r", shape), load_preset("aihwkit-default"))
    fused = prepare(model)
    assert ("Add" not in [n.op_type for n in fused.graph.node]) == fuses
    r_shape = [3 if d in ("n", "m") else d for d in (shape or [3, 4, 6, 6])]
    feeds = residual_feeds(rng) | {"r": rng.standard_normal(r_shape).astype(np.float32)}
    assert np.array_equal(run_native(fused, feeds), run_native(without_residual_fusion(model, monkeypatch), feeds))


def test_a_residual_without_relu_joins_alone(rng, monkeypatch):
    model = transform_model(residual_block_with(rng, "r", ["n", 4, 6, 6], relu=False), load_preset("aihwkit-default"))
    fused = prepare(model)
    conv2 = [n for n in fused.graph.node if n.op_type == "AnalogTileConv"][1]
    assert conv2.input[6] == "r" and {a.name: a.i for a in conv2.attribute}["relu"] == 0
    feeds = residual_feeds(rng) | {"r": rng.standard_normal((3, 4, 6, 6)).astype(np.float32)}
    assert np.array_equal(run_native(fused, feeds), run_native(without_residual_fusion(model, monkeypatch), feeds))


@pytest.mark.parametrize(("shape", "fuses"), [([], True), ([1], True), ([4], False)])
def test_only_a_runtime_scalar_factor_joins_the_scale(rng, shape, fuses):
    """A Mul by a value known at run time right after a tile joins its epilogue's scale when it is
    one number (a drift-compensation factor); one value per channel stays its own node."""
    model = transform_model(residual_block(rng), load_preset("aihwkit-default"))
    index, tile = next((i, n) for i, n in enumerate(model.graph.node) if n.op_type == "AnalogTile")
    for node in model.graph.node:
        node.input[:] = ["scaled" if name == tile.output[0] else name for name in node.input]
    model.graph.node.insert(index + 1, h.make_node("Mul", [tile.output[0], "k"], ["scaled"]))
    model.graph.input.append(h.make_tensor_value_info("k", TensorProto.FLOAT, shape))
    fused = prepare(model)
    constants = {t.name for t in fused.graph.initializer}
    convs = [n for n in fused.graph.node if n.op_type == "AnalogTileConv"]
    assert (len(convs), len([n for n in convs if n.input[4] not in constants])) == ((2, 1) if fuses else (1, 0))
    on_activations = [n for n in fused.graph.node if n.op_type == "Mul" and not set(n.input) & constants]
    assert len(on_activations) == (0 if fuses else 1)  # else conv1 stays an unfused tile and its Mul a node
    feeds = {"x": rng.standard_normal((2, 3, 6, 6)).astype(np.float32), "seed": np.array(2, np.int64),
             "k": np.full(shape, 0.7, np.float32)}
    np.testing.assert_allclose(run_native(fused, feeds), make_session(model, native=False).run(None, feeds)[0],
                               rtol=1e-4, atol=1e-4)


def test_every_gemm_tile_of_an_mlp_takes_its_epilogue(exported_models, rng):
    """A Gemm's tile has a matrix output even where no shape says so (after a Relu)."""
    model = transform_model(exported_models["mlp"], load_preset("aihwkit-default"))
    fused = prepare(model)
    kinds = [n.op_type for n in fused.graph.node if n.domain == DOMAIN]
    assert kinds and set(kinds) == {"AnalogTileEpilogue"}, kinds
    feeds = {model.graph.input[0].name: rng.random((5, 3, 4, 4), dtype=np.float32), "seed": np.array(3, np.int64)}
    np.testing.assert_allclose(run_native(fused, feeds), run_native(model, feeds), rtol=1e-5, atol=1e-5)
