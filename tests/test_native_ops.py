"""Conformance of the native kernels: the same cases through the native library, the ONNX function
bodies and the numpy reference. Deterministic parts must agree exactly; noise agrees element for
element to float tolerance (same counter-based generator) and in distribution."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto
from onnx import helper as h
from scipy import stats

from analog_onnx import native_graph
from analog_onnx.config import load_preset
from analog_onnx.errors import ModelError
from analog_onnx.native_graph import fold_constant_quantizers
from analog_onnx.ops import DOMAIN, OPSET_VERSION
from analog_onnx.ops import reference as ref
from analog_onnx.ops.functions import function_protos
from analog_onnx.runtime import (
    REQUIRE_NATIVE_ENV,
    make_session,
    native_library_path,
    native_required,
    session_options,
)
from analog_onnx.transform import transform_model

OUTPUTS = {"Noise": ["Y"], "Quantize": ["Y"], "MvmInput": ["Xn", "Sn"], "MvmOutput": ["Z"]}


@pytest.fixture(scope="module", autouse=True)
def native_library() -> Path:
    path = native_library_path()
    if path is None:
        message = "native kernels are not built: run `analog-onnx kernels build`"
        if native_required():
            pytest.fail(f"{REQUIRE_NATIVE_ENV}=1 but {message}")
        pytest.skip(message)
    return path


def op_model(op: str, attributes: dict, feeds: dict[str, np.ndarray], opset: int = 17) -> onnx.ModelProto:
    """A one-node model of ``op`` whose inputs are typed and shaped like ``feeds``, with every
    function body (public ops and helpers) as a transformed model has them."""
    inputs = [h.make_tensor_value_info(name, h.np_dtype_to_tensor_dtype(a.dtype), a.shape) for name, a in feeds.items()]
    element = h.np_dtype_to_tensor_dtype(next(iter(feeds.values())).dtype)
    outputs = [h.make_tensor_value_info(name, element, None) for name in OUTPUTS[op]]
    node = h.make_node(op, list(feeds), OUTPUTS[op], domain=DOMAIN, name=f"the_{op.lower()}", **attributes)
    graph = h.make_graph([node], op, inputs, outputs)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", opset), h.make_opsetid(DOMAIN, OPSET_VERSION)],
                        functions=function_protos(opset))


def run(op: str, attributes: dict, feeds: dict[str, np.ndarray], *, native: bool,
        threads: int | None = None) -> list[np.ndarray]:
    session = make_session(op_model(op, attributes, feeds), threads=threads, native=native)
    return session.run(None, feeds)


def both(op: str, attributes: dict, feeds: dict[str, np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(native outputs, function-body outputs)."""
    return run(op, attributes, feeds, native=True), run(op, attributes, feeds, native=False)


def controls(noise_scale: float, seed: int) -> dict[str, np.ndarray]:
    return {"noise_scale": np.array(noise_scale, np.float32), "seed": np.array(seed, np.int64)}


def assert_all_equal(arrays: list[np.ndarray], want: np.ndarray) -> None:
    for got in arrays:
        np.testing.assert_array_equal(got, want)


# -- deterministic parts: bit-identical ----------------------------------------------------------
@pytest.mark.parametrize(("shape", "attributes"), [
    ((5, 3, 4), {"bits": 4, "bound": 1.0, "signed": 1, "dynamic": 0, "axis": 0}),
    ((5, 3, 4), {"bits": 8, "bound": 2.5, "signed": 0, "dynamic": 0, "axis": 0}),
    ((5, 3, 4), {"bits": 3, "bound": 1.0, "signed": 1, "dynamic": 1, "axis": -1}),
    ((64, 300), {"bits": 5, "bound": 1.0, "signed": 1, "dynamic": 1, "axis": 1}),  # whole rows per task
    ((3, 40000), {"bits": 6, "bound": 1.0, "signed": 1, "dynamic": 1, "axis": 1}),  # rows split in chunks
    ((2, 30000), {"bits": 7, "bound": 1.0, "signed": 1, "dynamic": 1, "axis": 0}),  # one row
])
def test_quantize_is_bit_identical_to_reference(shape, attributes, rng):
    x = (rng.standard_normal(shape) * 2).astype(np.float32)
    x[0] = 0.0  # an all-zero row must not divide by zero
    native, function = both("Quantize", attributes, {"X": x})
    assert_all_equal([native[0], function[0]], ref.quantize(x, **attributes))


def test_quantize_rounds_ties_to_even_like_numpy():
    step = np.float32(1.0) / np.float32(127)
    x = ((np.arange(-140, 140, dtype=np.float32) + np.float32(0.5)) * step).reshape(1, -1)
    native, function = both("Quantize", {"bits": 8}, {"X": x})
    assert_all_equal([native[0], function[0]], ref.quantize(x, bits=8))


@pytest.mark.parametrize(("shape", "attributes"), [
    ((4, 3, 5), {"inp_bits": 7, "inp_bound": 1.0, "noise_management": 1, "axis": 1}),
    ((4, 3, 5), {"inp_bits": 0, "inp_bound": 0.5, "noise_management": 0, "axis": -1}),
    ((40, 3, 10), {"inp_bits": 5, "inp_bound": 0.8, "noise_management": 1, "axis": -1}),
    ((2, 50000), {"inp_bits": 7, "inp_bound": 1.0, "noise_management": 1, "axis": 1}),
])
def test_mvm_input_is_bit_identical_to_reference(shape, attributes, rng):
    x = rng.standard_normal(shape).astype(np.float32)
    x[1] = 0.0
    native, function = both("MvmInput", attributes, {"X": x})
    want_x, want_scale = ref.mvm_input(x, **attributes)
    assert_all_equal([native[0], function[0]], want_x)
    assert_all_equal([native[1], function[1]], want_scale)


@pytest.mark.parametrize("attributes", [
    {"weight_scale": 0.37, "out_bits": 9, "out_bound": 12.0, "axis": 1},
    {"weight_scale": 1.5, "out_bits": 0, "out_bound": 2.0, "axis": -1},
    {"weight_scale": 1.0, "axis": 1},  # no ADC: out_bound defaults to inf
])
def test_noise_free_mvm_output_is_bit_identical_to_reference(attributes, rng):
    y = (rng.standard_normal((6, 4, 300)) * 3).astype(np.float32)
    rows = 6 if attributes["axis"] == 1 else 24
    scale = rng.uniform(0.5, 2.0, (rows, 1)).astype(np.float32)
    native, function = both("MvmOutput", {**attributes, "out_noise": 0.0, "stream": 2},
                            {"Y": y, "S": scale, **controls(1.0, 3)})
    want = ref.mvm_output(y, scale, 1.0, 3, out_noise=0.0, stream=2, **attributes)
    assert_all_equal([native[0], function[0]], want)


# -- noise: the same stream as the reference ---------------------------------------------------
@pytest.mark.parametrize("attributes", [
    {"sigma_add": 0.3, "sigma_mul": 0.0, "relative": 0, "stream": 1},
    {"sigma_add": 0.0, "sigma_mul": 0.2, "relative": 0, "stream": 2},
    {"sigma_add": 0.3, "sigma_mul": 0.2, "relative": 1, "stream": 9},
    {"sigma_add": 0.3, "sigma_mul": 0.0, "relative": 1, "stream": 3},
])
@pytest.mark.parametrize("shape", [(64, 3, 100), (7, 3, 25)])  # odd rows start mid-pair
def test_noise_matches_reference_stream(attributes, shape, rng):
    x = rng.standard_normal(shape).astype(np.float32)
    native, function = both("Noise", attributes, {"X": x, **controls(1.7, 42)})
    want = ref.noise(x, 1.7, 42, **attributes)
    np.testing.assert_allclose(native[0], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(native[0], function[0], rtol=1e-5, atol=1e-5)


def test_noisy_mvm_output_matches_reference_up_to_rare_rounding_ties(rng):
    y = rng.standard_normal((16, 8, 500)).astype(np.float32)
    scale = rng.uniform(0.5, 2.0, (16, 1)).astype(np.float32)
    attributes = {"weight_scale": 0.5, "out_noise": 0.06, "out_bits": 9, "out_bound": 12.0, "axis": 1, "stream": 4}
    native, function = both("MvmOutput", attributes, {"Y": y, "S": scale, **controls(1.0, 7)})
    want = ref.mvm_output(y, scale, 1.0, 7, **attributes)
    one_step = np.float32(12.0 / 255) * np.float32(0.5) * scale.max()
    for got in (native[0], function[0]):
        # noise agrees to float tolerance; only a value on a rounding tie may move one ADC step
        assert np.abs(got - want).max() <= one_step * 1.0001
        assert np.mean(got != want) < 1e-3


def test_noise_scale_zero_is_identity(rng):
    x = rng.standard_normal((8, 5000)).astype(np.float32)
    (y,) = run("Noise", {"sigma_add": 1.0, "sigma_mul": 0.5}, {"X": x, **controls(0.0, 3)}, native=True)
    np.testing.assert_array_equal(y, x)


# -- noise: distribution -------------------------------------------------------------------------
def test_additive_noise_is_standard_normal_per_sigma():
    x = np.zeros((200, 1000), np.float32)
    (y,) = run("Noise", {"sigma_add": 2.0, "stream": 4}, {"X": x, **controls(0.5, 11)}, native=True)
    deviation = y.ravel()  # sigma = 0.5 * 2.0
    assert abs(deviation.mean()) < 0.01
    assert abs(deviation.std() - 1.0) < 0.01
    assert stats.kstest(deviation, "norm").pvalue > 1e-3


def test_multiplicative_and_relative_noise_scale_with_the_signal():
    x = np.full((4000, 2), 3.0, np.float32)
    (mul,) = run("Noise", {"sigma_mul": 0.1}, {"X": x, **controls(1.0, 1)}, native=True)
    assert abs((mul / 3.0 - 1.0).std() - 0.1) < 0.005
    x[:, 1] = -6.0  # per-sample abs-max is 6
    (rel,) = run("Noise", {"sigma_add": 0.05, "relative": 1}, {"X": x, **controls(1.0, 2)}, native=True)
    assert abs((rel - x).std() - 0.3) < 0.01


def test_mvm_output_noise_is_normal_in_normalized_units():
    y = np.zeros((500, 400), np.float32)
    scale = np.full((500, 1), 2.0, np.float32)
    attributes = {"weight_scale": 0.5, "out_noise": 0.06, "axis": 1, "stream": 5}
    (z,) = run("MvmOutput", attributes, {"Y": y, "S": scale, **controls(1.0, 8)}, native=True)
    normalized = z.ravel() / np.float32(0.06)  # times weight scale 0.5 and input scale 2.0
    assert abs(normalized.mean()) < 0.01
    assert abs(normalized.std() - 1.0) < 0.01
    assert stats.kstest(normalized, "norm").pvalue > 1e-3


# -- seeds and threads ---------------------------------------------------------------------------
def test_same_seed_reproduces_other_seeds_and_streams_differ():
    x = np.zeros((32, 2000), np.float32)

    def noise(seed: int, stream: int) -> np.ndarray:
        return run("Noise", {"sigma_add": 1.0, "stream": stream}, {"X": x, **controls(1.0, seed)}, native=True)[0]

    a = noise(5, 1)
    np.testing.assert_array_equal(a, noise(5, 1))
    assert abs(np.corrcoef(a.ravel(), noise(6, 1).ravel())[0, 1]) < 0.02
    assert abs(np.corrcoef(a.ravel(), noise(5, 2).ravel())[0, 1]) < 0.02


def test_negative_seed_draws_fresh_noise_every_run():
    x = np.zeros((16, 3000), np.float32)
    feeds = {"X": x, **controls(1.0, -1)}
    session = make_session(op_model("Noise", {"sigma_add": 1.0}, feeds), native=True)
    first, second = session.run(None, feeds)[0], session.run(None, feeds)[0]
    assert not np.array_equal(first, second)
    assert abs(first.std() - 1.0) < 0.02


@pytest.mark.parametrize(("op", "attributes", "shape"), [
    ("Noise", {"sigma_add": 0.2, "sigma_mul": 0.1}, (4, 64, 40, 40)),
    ("Noise", {"sigma_add": 0.2, "relative": 1}, (3, 100000)),
    ("Noise", {"sigma_mul": 0.2, "relative": 1}, (33, 3, 5, 7)),
    ("Quantize", {"bits": 5, "dynamic": 1, "axis": 0}, (4, 64, 40, 40)),
    ("MvmInput", {"inp_bits": 7}, (40, 16, 32, 32)),
    ("MvmInput", {"inp_bits": 7}, (2, 200000)),
    ("MvmOutput", {"out_noise": 0.06, "out_bits": 9, "out_bound": 12.0, "weight_scale": 0.3}, (40, 16, 32, 32)),
    ("MvmOutput", {"out_noise": 0.06, "out_bits": 9, "out_bound": 12.0}, (33, 3, 5, 7)),
])
def test_thread_count_does_not_change_results(op, attributes, shape, rng):
    feeds = {("Y" if op == "MvmOutput" else "X"): rng.standard_normal(shape).astype(np.float32)}
    if op == "MvmOutput":
        feeds["S"] = rng.uniform(0.5, 2.0, (shape[0], 1)).astype(np.float32)
    if op in ("Noise", "MvmOutput"):
        feeds.update(controls(1.0, 123))
    results = [run(op, attributes, feeds, native=True, threads=threads) for threads in (1, 2, 3)]
    for other in results[1:]:
        for got, want in zip(other, results[0], strict=True):
            np.testing.assert_array_equal(got, want)


# -- errors and whole models ---------------------------------------------------------------------
def test_float16_input_is_refused_with_a_clear_error():
    feeds = {"X": np.zeros((2, 3), np.float16), **controls(1.0, 0)}
    with pytest.raises(ModelError, match=r"Noise node 'the_noise': input X is float16.*float32"):
        make_session(op_model("Noise", {"sigma_add": 0.1}, feeds), native=True)


def test_mvm_output_rejects_a_scale_of_the_wrong_length(rng):
    feeds = {"Y": np.zeros((4, 10), np.float32), "S": np.ones((3, 1), np.float32), **controls(1.0, 0)}
    with pytest.raises(Exception, match="S has 3 values but Flatten"):
        run("MvmOutput", {}, feeds, native=True)


def profiled_op_types(model: onnx.ModelProto, native: bool, feeds: dict, directory: Path) -> set[str]:
    """The op types onnxruntime actually executed (function bodies are inlined into standard ops)."""
    options = session_options(native=native)
    options.enable_profiling = True
    options.profile_file_prefix = str(directory / f"profile-{native}")
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    session.run(None, feeds)
    events = json.loads(Path(session.end_profiling()).read_text())
    return {e["args"]["op_name"] for e in events if e.get("cat") == "Node" and "op_name" in e.get("args", {})}


def test_transformed_model_runs_native_kernels_and_agrees_with_function_bodies(exported_models, rng, tmp_path):
    model = transform_model(exported_models["cnn"], load_preset("aihwkit-default"))
    assert {f.name for f in model.functions} >= {"StandardNormals", "RowAbsMax", "ClipAndRound"}  # helpers stay
    feeds = {model.graph.input[0].name: rng.random((8, 3, 4, 4), dtype=np.float32), "seed": np.array(3, np.int64)}
    native = make_session(model, native=True).run(None, feeds)[0]
    function = make_session(model, native=False).run(None, feeds)[0]
    np.testing.assert_allclose(native, function, rtol=1e-4, atol=1e-4)
    native_ops = profiled_op_types(native_graph.prepare(model), True, feeds, tmp_path)
    assert "MvmInput" in native_ops and native_ops & {"MvmOutput", "MvmOutputEpilogue"}
    assert "MvmOutput" not in profiled_op_types(model, False, feeds, tmp_path)


def test_quantized_weights_are_folded_to_constants_before_the_session(rng, tmp_path):
    """onnxruntime never constant-folds a custom kernel; the runtime folds Quantize of a weight."""
    weight = rng.standard_normal((6, 4)).astype(np.float32)
    nodes = [h.make_node("Quantize", ["w"], ["wq"], domain=DOMAIN, bits=4, dynamic=1, axis=1),
             h.make_node("MatMul", ["X", "wq"], ["Y"])]
    graph = h.make_graph(nodes, "weights", [h.make_tensor_value_info("X", TensorProto.FLOAT, [3, 6])],
                         [h.make_tensor_value_info("Y", TensorProto.FLOAT, [3, 4])],
                         [onnx.numpy_helper.from_array(weight, "w")])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17), h.make_opsetid(DOMAIN, OPSET_VERSION)],
                         functions=function_protos(17))
    feeds = {"X": rng.standard_normal((3, 6)).astype(np.float32)}
    native = make_session(model, native=True).run(None, feeds)[0]
    np.testing.assert_array_equal(native, make_session(model, native=False).run(None, feeds)[0])
    np.testing.assert_array_equal(native, feeds["X"] @ ref.quantize(weight, bits=4, dynamic=1, axis=1))
    assert "Quantize" not in profiled_op_types(fold_constant_quantizers(model), True, feeds, tmp_path)
    assert fold_constant_quantizers(op_model("Quantize", {"bits": 4}, feeds)) is None  # nothing constant
