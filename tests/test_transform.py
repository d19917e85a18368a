"""The graph transform: numbers it must keep, noise it must add, and what strip gives back."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper
from onnx import helper as h

from analog_onnx.config import AnalogConfig, load_preset
from analog_onnx.errors import ModelError
from analog_onnx.ops import DOMAIN
from analog_onnx.transform import analog_sites, read_analog_metadata, strip_model, transform_model

ARCHS = ("mlp", "cnn", "depthwise")


def run(model: onnx.ModelProto, x: np.ndarray, optimize: bool = True, **controls) -> np.ndarray:
    options = ort.SessionOptions()
    if not optimize:  # onnxruntime rewrites DequantizeLinear+MatMul into dynamic int8 MatMul otherwise
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed = {"x": x}
    if "noise_scale" in controls:
        feed["noise_scale"] = np.array(controls["noise_scale"], np.float32)
    if "seed" in controls:
        feed["seed"] = np.array(controls["seed"], np.int64)
    return session.run(None, feed)[0]


def no_quantization(preset: str) -> AnalogConfig:
    config = load_preset(preset)
    return config.with_overrides(["inp_bits=0", "out_bits=0", "out_bound=0"])


@pytest.mark.parametrize("arch", ARCHS)
def test_ideal_equals_original(exported_models, arch, rng):
    model = exported_models[arch]
    transformed = transform_model(model, load_preset("ideal"))
    onnx.checker.check_model(transformed, full_check=True)
    x = rng.standard_normal((7, 3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(run(transformed, x), run(model, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("preset", ["hardening-additive", "aihwkit-default"])
def test_zero_noise_without_quantization_equals_original(exported_models, dynamo_models, arch, preset, rng):
    config = no_quantization(preset)
    x = rng.standard_normal((5, 3, 4, 4)).astype(np.float32)
    for model in (exported_models[arch], dynamo_models[arch]):
        transformed = transform_model(model, config)
        onnx.checker.check_model(transformed, full_check=True)
        assert any(n.domain == DOMAIN for n in transformed.graph.node)
        want = run(model, x)
        np.testing.assert_allclose(run(transformed, x, noise_scale=0.0, seed=3), want, rtol=1e-4, atol=1e-4)
        assert np.abs(run(transformed, x, noise_scale=1.0, seed=3) - want).max() > 1e-2


@pytest.mark.parametrize("arch", ARCHS)
def test_aihwkit_quantization_is_close_but_not_exact(exported_models, arch, rng):
    model = exported_models[arch]
    x = rng.standard_normal((5, 3, 4, 4)).astype(np.float32)
    out = run(transform_model(model, load_preset("aihwkit-default")), x, noise_scale=0.0, seed=0)
    want = run(model, x)
    error = np.abs(out - want).max() / np.abs(want).max()
    assert 0 < error < 0.25  # 7-bit DAC and 9-bit ADC on unmapped small weights: visible, bounded


def one_matmul(weight: np.ndarray) -> onnx.ModelProto:
    graph = h.make_graph(
        [h.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "one_matmul",
        [h.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", weight.shape[0]])],
        [h.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", weight.shape[1]])],
        [numpy_helper.from_array(weight, "w")])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])


def test_hardening_noise_variance_matches_theory(rng):
    """Noise sigma on the input and on the output: Var = sigma^2 (sum_i W_ij^2 + 1) per column j."""
    weight = rng.standard_normal((16, 6)).astype(np.float32) * 0.5
    model = transform_model(one_matmul(weight), load_preset("hardening-additive"))
    x = np.tile(rng.standard_normal((1, 16)).astype(np.float32), (40000, 1))
    sigma = 0.3
    deviation = run(model, x, noise_scale=sigma, seed=1) - x @ weight
    want = sigma**2 * ((weight**2).sum(axis=0) + 1)
    np.testing.assert_allclose(deviation.var(axis=0), want, rtol=0.04)
    np.testing.assert_allclose(deviation.mean(axis=0), 0, atol=0.02)


@pytest.mark.parametrize("omega", [0.0, 1.0, 0.5])
def test_aihwkit_output_noise_scales_with_input_and_mapped_weights(rng, omega):
    weight = rng.standard_normal((8, 4)).astype(np.float32)
    config = load_preset("aihwkit-default").with_overrides(
        ["inp_bits=0", "out_bits=0", "out_bound=0", f"weight_scaling_omega={omega}"])
    model = transform_model(one_matmul(weight), config)
    x = np.tile(np.full((1, 8), 3.0, np.float32), (20000, 1))
    deviation = run(model, x, noise_scale=1.0, seed=5) - x @ weight
    # out_noise 0.06 in normalized units, times input abs-max (3), times max|W|/omega when remapped
    mapping = np.abs(weight).max() / omega if omega else 1.0
    np.testing.assert_allclose(deviation.std(axis=0), 0.06 * 3.0 * mapping, rtol=0.03)


def test_seed_input_makes_runs_reproducible(exported_models, rng):
    model = transform_model(exported_models["cnn"], load_preset("hardening-additive"))
    x = rng.standard_normal((3, 3, 4, 4)).astype(np.float32)
    a, b = run(model, x, noise_scale=0.5, seed=7), run(model, x, noise_scale=0.5, seed=7)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, run(model, x, noise_scale=0.5, seed=8))


def assert_same_graph(a: onnx.ModelProto, b: onnx.ModelProto) -> None:
    assert [(n.op_type, list(n.input), list(n.output)) for n in a.graph.node] == \
           [(n.op_type, list(n.input), list(n.output)) for n in b.graph.node]
    assert {t.name: numpy_helper.to_array(t).tobytes() for t in a.graph.initializer} == \
           {t.name: numpy_helper.to_array(t).tobytes() for t in b.graph.initializer}
    assert [o.name for o in a.graph.output] == [o.name for o in b.graph.output]
    assert [i.name for i in a.graph.input] == [i.name for i in b.graph.input]
    assert {o.domain for o in a.opset_import} == {o.domain for o in b.opset_import}
    assert not a.functions and not b.functions


@pytest.mark.parametrize("preset", ["ideal", "hardening-additive", "aihwkit-default"])
@pytest.mark.parametrize("arch", ARCHS)
def test_strip_gives_back_the_original(exported_models, dynamo_models, arch, preset):
    config = load_preset(preset)
    if config.placement.where == "mvm":
        config = config.with_overrides(["weights.bits=4"])
    for model in (exported_models[arch], dynamo_models[arch]):
        if model.functions:  # dynamo may add functions of its own; compare those separately
            continue
        stripped = strip_model(transform_model(model, config))
        assert_same_graph(stripped, model)
        assert read_analog_metadata(stripped) is None


def test_metadata_records_config_and_sites(exported_models):
    config = load_preset("aihwkit-default")
    transformed = transform_model(exported_models["cnn"], config)
    meta = read_analog_metadata(transformed)
    assert meta.config == config
    assert meta.sites == [s.name for s in analog_sites(exported_models["cnn"], config)]
    assert meta.inputs == {"noise_scale": "noise_scale", "seed": "seed", "chip_seed": "chip_seed",
                           "t_inference": "t_inference"}
    later = transform_model(exported_models["cnn"], config.with_overrides(["t_inference=86400"]))
    default = next(i for i in later.graph.initializer if i.name == "t_inference")
    assert numpy_helper.to_array(default) == np.float32(86400)
    assert read_analog_metadata(later).config.t_inference == 86400


def test_include_exclude_and_keep_digital(exported_models):
    model = exported_models["depthwise"]
    every = [s.name for s in analog_sites(model, load_preset("aihwkit-default"))]
    assert len(every) == 3
    kept = load_preset("aihwkit-default").with_overrides(["keep_first_digital=true", "keep_last_digital=true"])
    assert [s.name for s in analog_sites(model, kept)] == every[1:-1]
    only = load_preset("aihwkit-default").with_overrides([f"placement.include={every[0]}"])
    assert [s.name for s in analog_sites(model, only)] == [every[0]]
    no_gemm = load_preset("hardening-additive").with_overrides(["exclude_op_types=Gemm,MaxPool"])
    assert {s.op_type for s in analog_sites(model, no_gemm)} == {"Input", "Conv", "Relu", "BatchNormalization"} - \
        {"BatchNormalization"} | ({"BatchNormalization"} & {n.op_type for n in model.graph.node})


def test_sites_argument_restricts_noise(exported_models):
    model, config = exported_models["mlp"], load_preset("aihwkit-default")
    first = analog_sites(model, config)[0].name
    transformed = transform_model(model, config, sites=[first])
    assert sum(n.op_type in ("MvmOutput", "AnalogTile") for n in transformed.graph.node) == 1
    with pytest.raises(ModelError, match="unknown site"):
        transform_model(model, config, sites=["nope"])


def test_weight_quantization_changes_weights_only_to_the_grid(rng):
    weight = rng.standard_normal((8, 4)).astype(np.float32)
    config = load_preset("ideal").with_overrides(["weights.bits=3"])
    model = transform_model(one_matmul(weight), config)
    x = np.eye(8, dtype=np.float32)
    effective = run(model, x)  # rows of the identity read back the quantized weight
    for column, original in zip(effective.T, weight.T, strict=True):
        step = np.abs(original).max() / 3
        np.testing.assert_allclose(column / step, np.rint(column / step), atol=1e-4)
        assert np.abs(column - original).max() <= step / 2 + 1e-6


def test_refuses_transformed_models(exported_models):
    transformed = transform_model(exported_models["mlp"], load_preset("hardening-additive"))
    with pytest.raises(ModelError, match="already transformed"):
        transform_model(transformed, load_preset("hardening-additive"))


def test_qdq_weights_are_analog_layers(rng):
    weight = rng.integers(-127, 127, (6, 4)).astype(np.int8)
    scale = np.float32(0.02)
    graph = h.make_graph(
        [h.make_node("DequantizeLinear", ["wq", "ws"], ["w"], name="dq"),
         h.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "qdq",
        [h.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6])],
        [h.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(weight, "wq"), numpy_helper.from_array(np.array(scale), "ws")])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])
    config = no_quantization("aihwkit-default")
    transformed = transform_model(model, config)
    onnx.checker.check_model(transformed, full_check=True)
    x = rng.standard_normal((4, 6)).astype(np.float32)
    exact = run(transformed, x, optimize=False, noise_scale=0.0)
    np.testing.assert_allclose(exact, x @ (weight * scale), rtol=1e-4, atol=1e-4)
    assert [n.op_type for n in transformed.graph.node if n.domain == DOMAIN] == ["AnalogTile"]


def test_subgraphs_are_left_intact(rng):
    branch = h.make_graph([h.make_node("MatMul", ["x", "w"], ["b_out"], name="inner")], "then", [],
                          [h.make_tensor_value_info("b_out", TensorProto.FLOAT, None)])
    other = h.make_graph([h.make_node("Identity", ["x"], ["e_out"])], "else", [],
                         [h.make_tensor_value_info("e_out", TensorProto.FLOAT, None)])
    graph = h.make_graph(
        [h.make_node("If", ["cond"], ["z"], then_branch=branch, else_branch=other, name="if"),
         h.make_node("MatMul", ["z", "w"], ["y"], name="outer")], "with_if",
        [h.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2]),
         h.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [h.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])],
        [numpy_helper.from_array(np.eye(2, dtype=np.float32), "w")])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    transformed = transform_model(model, load_preset("aihwkit-default"))
    onnx.checker.check_model(transformed, full_check=True)
    if_node = next(n for n in transformed.graph.node if n.op_type == "If")
    then_branch = next(a.g for a in if_node.attribute if a.name == "then_branch")
    assert [n.op_type for n in then_branch.node] == ["MatMul"]
    assert read_analog_metadata(transformed).sites == ["outer"]
    session = ort.InferenceSession(transformed.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.eye(2, dtype=np.float32)
    session.run(None, {"x": x, "cond": np.array(True)})


def test_opset13_export_and_dynamic_batch(rng):
    import torch
    from helpers import export_torch

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(16, 3))
    model = export_torch(net, torch.randn(1, 3, 4, 4), opset=13)
    transformed = transform_model(model, load_preset("aihwkit-default"))
    onnx.checker.check_model(transformed, full_check=True)
    for batch in (1, 9):
        assert run(transformed, rng.standard_normal((batch, 3, 4, 4)).astype(np.float32)).shape == (batch, 3)


def test_transform_leaves_the_given_model_unchanged(exported_models):
    model = exported_models["cnn"]
    before = model.SerializeToString()
    transform_model(model, load_preset("aihwkit-default").with_overrides(["weights.bits=4"]))
    assert model.SerializeToString() == before


def attention_scores() -> onnx.ModelProto:
    """scores = (x Wq) (x Wk)^T: one MatMul of two activations, as in attention."""
    rng = np.random.default_rng(0)
    nodes = [h.make_node("MatMul", ["x", "wq"], ["q"], name="q_proj"),
             h.make_node("MatMul", ["x", "wk"], ["k"], name="k_proj"),
             h.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1], name="kt"),
             h.make_node("MatMul", ["q", "kt"], ["y"], name="scores")]
    weights = [numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), n) for n in ("wq", "wk")]
    graph = h.make_graph(nodes, "attention", [h.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 5, 8])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 5, 5])], weights)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])


def test_activation_matmul_is_opt_in(rng):
    model = attention_scores()
    config = no_quantization("aihwkit-default")
    assert [s.name for s in analog_sites(model, config)] == ["q_proj", "k_proj"]
    config = config.with_overrides(["activation_matmul=true"])
    assert [s.name for s in analog_sites(model, config)] == ["q_proj", "k_proj", "scores"]
    transformed = transform_model(model, config)
    onnx.checker.check_model(transformed, full_check=True)
    x = rng.standard_normal((2, 5, 8)).astype(np.float32)
    want = run(model, x)
    np.testing.assert_allclose(run(transformed, x, noise_scale=0.0), want, rtol=1e-4, atol=1e-4)
    noisy = run(transformed, x, noise_scale=1.0, seed=2)
    assert 0 < np.abs(noisy - want).max() < 0.5 * np.abs(want).max()
    assert_same_graph(strip_model(transformed), model)
