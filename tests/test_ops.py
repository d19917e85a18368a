"""The op set: one conformance test over the four implementations of every op case the schema
declares, then what each implementation must do on its own (the reference's definition, noise
statistics, seeds, threads, gradients, errors).

Deterministic parts agree bit for bit; noise agrees element for element with the reference's
counter-based stream (function bodies and native kernels to float tolerance, the torch twin
exactly when given the same normals) and in distribution.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers import op_model
from onnx import TensorProto
from onnx import helper as h
from scipy import stats

from analog_onnx import native_graph
from analog_onnx.config import load_preset
from analog_onnx.devices.streams import chip_draws, read_normals
from analog_onnx.devices.torch_twins import draws_from_numpy
from analog_onnx.errors import ModelError
from analog_onnx.native_graph import fold_constant_quantizers
from analog_onnx.ops import DOMAIN, OPSET_VERSION, functions
from analog_onnx.ops import reference as ref
from analog_onnx.ops import torch_twins as tw
from analog_onnx.ops.functions import DEVICE_BLOCK, function_protos
from analog_onnx.ops.native import build
from analog_onnx.ops.rng import INV_2_24, noise_normals, normals, squares_pair, stream_key
from analog_onnx.ops.schema import OPS, SCHEMAS, OpSchema, Required
from analog_onnx.runtime import make_session, session_options
from analog_onnx.transform import transform_model

NATIVE = pytest.param("native", marks=pytest.mark.native)
ENGINES = ["function", NATIVE]  # the implementations that run in onnxruntime
NOISE_SCALE, SEED = 1.7, 42
CHIP_SEED, T_INFERENCE = 7, 3600.0
SHAPES = [(5, 3, 4), (7, 3, 25), (64, 300), (3, 40000)]  # odd rows start mid-pair; rows split in chunks


def controls(noise_scale: float, seed: int) -> dict[str, np.ndarray]:
    return {"noise_scale": np.array(noise_scale, np.float32), "seed": np.array(seed, np.int64)}


def chip_controls(chip_seed: int, t_inference: float) -> dict[str, np.ndarray]:
    return {"chip_seed": np.array(chip_seed, np.int64), "t_inference": np.array(t_inference, np.float32)}


def feeds_for(op: OpSchema, attributes: dict, shape: tuple[int, ...], rng: np.random.Generator) -> dict:
    """Inputs named as the schema names them: data with an all-zero row, a scale per row, controls."""
    x = (rng.standard_normal(shape) * 2).astype(np.float32)
    x[0] = 0.0  # an all-zero row must not divide by zero
    feeds = {op.inputs[0]: x}
    if "W" in op.inputs:  # a layer's weight [outputs, inputs]
        feeds["W"] = (rng.standard_normal((7, shape[-1])) * 0.5).astype(np.float32)
    if "S" in op.inputs:
        feeds["S"] = rng.uniform(0.5, 2.0, (ref.rows(x, attributes.get("axis", 1)).shape[0], 1)).astype(np.float32)
    if "seed" in op.inputs:
        feeds.update(controls(NOISE_SCALE, SEED))
    if "chip_seed" in op.inputs:
        feeds.update(chip_controls(CHIP_SEED, T_INFERENCE))
    return feeds


def run(implementation: str, op: OpSchema, attributes: dict, feeds: dict, *, threads: int | None = None
        ) -> list[np.ndarray]:
    """The op's outputs from one implementation: "reference", "function", "native" or "twin"."""
    if implementation in ("function", "native"):
        session = make_session(op_model(op.name, attributes, feeds), threads=threads,
                               native=implementation == "native")
        return session.run(None, feeds)
    args = list(feeds.values())
    if implementation == "reference":
        result = getattr(ref, op.python_name)(*args, **attributes)
    else:
        result = run_twin(op, attributes, args)
    return [np.asarray(r.detach().numpy() if isinstance(r, torch.Tensor) else r) for r in
            (result if isinstance(result, tuple) else (result,))]


def run_twin(op: OpSchema, attributes: dict, args: list[np.ndarray]) -> tuple | torch.Tensor:
    """The torch twin, fed the reference's normals for this seed and stream (it has no stream of its own)."""
    twin = getattr(tw, op.python_name)
    settings = {k: v for k, v in attributes.items() if k != "stream"}
    tensors = [torch.from_numpy(a) for a in args if a.ndim]
    if "seed" not in op.inputs:
        return twin(*tensors, **settings)
    key, size = stream_key(SEED, attributes.get("stream", 0)), args[0].size
    if op.name == "DeviceWeights":
        stream = attributes.get("stream", 0)
        draws = draws_from_numpy(chip_draws(CHIP_SEED, stream, args[0].shape))
        read = torch.from_numpy(read_normals(SEED, stream, args[0].shape))
        return twin(*tensors, NOISE_SCALE, T_INFERENCE, draws=draws, read=read, **settings)
    if op.name == "Noise":
        both = bool(attributes.get("sigma_add")) and bool(attributes.get("sigma_mul"))
        z1, z2 = (torch.from_numpy(z.reshape(args[0].shape)) for z in noise_normals(key, size, both))
        return twin(*tensors, NOISE_SCALE, normals=(z1, z2), **settings)
    if op.name == "AnalogTile":  # more draws than elements: a prefix of a long enough stream
        size = attributes.get("bm_rounds", 1) * args[0].size * args[1].shape[0]
    return twin(*tensors, NOISE_SCALE, normals=torch.from_numpy(normals(key, size)), **settings)


CASES = [pytest.param(op, attributes, id=f"{op.name}-{label}")
         for op in OPS if not op.native_only for label, attributes in op.cases.items()]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("implementation", ["function", NATIVE, "twin"])
@pytest.mark.parametrize(("op", "attributes"), CASES)
def test_every_implementation_computes_the_reference(op, attributes, implementation, shape, rng):
    if implementation == "native" and not op.native:
        pytest.skip(f"{op.name} has no native kernel: native sessions run its function body")
    feeds = feeds_for(op, attributes, shape, rng)
    want = run("reference", op, attributes, feeds)
    got = run(implementation, op, attributes, feeds)
    assert len(got) == len(want) == len(op.outputs)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == np.float32 and g.shape == w.shape
        if op.product:  # summation order differs: float tolerance, a rare ADC step or bound-management round
            close = np.isclose(g, w, rtol=1e-4, atol=1e-4)
            assert close.mean() > 0.99 and np.abs(g - w).max() < 0.1 * np.abs(w).max() + 1e-3
        elif not op.is_random(attributes) or (implementation == "twin" and op.name != "DeviceWeights"):
            np.testing.assert_array_equal(g, w)
        elif op.name == "DeviceWeights":  # log and pow to float tolerance, relative to the weights' range
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * np.abs(feeds["W"]).max())
        elif "out_bits" not in attributes:
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
        else:  # float-tolerance noise may move a value on an ADC rounding tie by one step
            step = np.float32(attributes["out_bound"] / 255) * np.float32(attributes["weight_scale"])
            assert np.abs(g - w).max() <= step * feeds["S"].max() * 1.0001
            assert np.mean(g != w) < 1e-3


@pytest.mark.parametrize("op", [op for op in OPS if not op.native_only], ids=lambda op: op.name)
def test_function_bodies_declare_the_schemas_inputs_outputs_and_defaults(op):
    proto = getattr(functions, op.name).to_function_proto()
    assert tuple(proto.input) == op.inputs and len(proto.output) == len(op.outputs)
    declared = {a.name: h.get_attribute_value(a) for a in proto.attribute_proto}
    declared = {k: v.decode() if isinstance(v, bytes) else v for k, v in declared.items()}
    assert set(proto.attribute) | set(declared) == set(op.attributes)
    assert declared == {k: v for k, v in op.attributes.items() if not isinstance(v, Required)}
    assert set(op.benchmarked) <= set(op.cases)


@pytest.mark.parametrize("opset", [13, 17, 21])
@pytest.mark.parametrize("attributes", list(SCHEMAS["Quantize"].cases.values()))
def test_quantize_function_equals_reference_at_every_opset(attributes, opset, rng):
    x = (rng.standard_normal((5, 3, 4)) * 2).astype(np.float32)
    x[0] = 0.0
    session = make_session(op_model("Quantize", attributes, {"X": x}, opset=opset), native=False)
    np.testing.assert_array_equal(session.run(None, {"X": x})[0], ref.quantize(x, **attributes))


def test_function_bodies_pass_the_checker():
    for opset in (13, 18, 21):
        for proto in function_protos(opset):
            assert {i.domain: i.version for i in proto.opset_import}[""] == opset
    model = h.make_model(h.make_graph([], "g", [], []), opset_imports=[h.make_opsetid("", 18)],
                         functions=function_protos(18))
    onnx.checker.check_model(model, full_check=True)


# -- the reference's definition ------------------------------------------------------------------
def test_quantize_grid_clip_and_half_to_even():
    # 2-bit signed: levels -1, 0, 1 times step 1.0; 0.5 and -0.5 round to even (0); beyond bound clips
    x = np.array([[-3.0, -0.5, 0.5, 1.5, 0.49, 7.0]], np.float32)
    np.testing.assert_array_equal(ref.quantize(x, bits=2, bound=1.0), [[-1, 0, 0, 1, 0, 1]])
    # 3-bit unsigned, bound 7: integer grid 0..7; negatives clip to 0, 2.5 -> 2, 3.5 -> 4
    x = np.array([[-1.0, 2.5, 3.5, 9.0]], np.float32)
    np.testing.assert_array_equal(ref.quantize(x, bits=3, bound=7.0, signed=0), [[0, 2, 4, 7]])


@pytest.mark.parametrize("implementation", ["function", NATIVE])
def test_quantize_rounds_ties_to_even_like_numpy(implementation):
    step = np.float32(1.0) / np.float32(127)
    x = ((np.arange(-140, 140, dtype=np.float32) + np.float32(0.5)) * step).reshape(1, -1)
    got = run(implementation, SCHEMAS["Quantize"], {"bits": 8}, {"X": x})[0]
    np.testing.assert_array_equal(got, ref.quantize(x, bits=8))


def test_dynamic_quantization_keeps_each_row_abs_max():
    x = np.array([[0.1, -4.0, 2.0], [0.3, 0.2, -0.1]], np.float32)
    q = ref.quantize(x, bits=4, dynamic=1, axis=1)
    np.testing.assert_allclose(np.abs(q).max(axis=1), np.abs(x).max(axis=1))


def test_adc_clips_at_bound_times_scales():
    y = np.array([[100.0, -100.0, 0.0]], np.float32)
    z = ref.mvm_output(y, np.array([[2.0]], np.float32), 0.0, 0, weight_scale=0.5, out_bits=9, out_bound=12.0)
    np.testing.assert_array_equal(z, [[12.0, -12.0, 0.0]])


# -- noise: distribution, seeds, streams -----------------------------------------------------------
def noise(implementation: str, x: np.ndarray, noise_scale: float, seed: int, **attributes) -> np.ndarray:
    return run(implementation, SCHEMAS["Noise"], attributes, {"X": x, **controls(noise_scale, seed)})[0]


@pytest.mark.parametrize("implementation", ["reference", *ENGINES])
def test_noise_scale_zero_is_identity(implementation, rng):
    x = rng.standard_normal((8, 5000)).astype(np.float32)
    np.testing.assert_array_equal(noise(implementation, x, 0.0, 3, sigma_add=1.0, sigma_mul=0.5), x)


@pytest.mark.parametrize("implementation", ENGINES)
def test_additive_noise_is_standard_normal_per_sigma(implementation):
    deviation = noise(implementation, np.zeros((200, 1000), np.float32), 0.5, 11, sigma_add=2.0, stream=4).ravel()
    assert abs(deviation.mean()) < 0.01  # sigma = 0.5 * 2.0
    assert abs(deviation.std() - 1.0) < 0.01
    assert stats.kstest(deviation, "norm").pvalue > 1e-3


@pytest.mark.parametrize("implementation", ENGINES)
def test_multiplicative_and_relative_noise_scale_with_the_signal(implementation):
    x = np.full((4000, 2), 3.0, np.float32)
    mul = noise(implementation, x, 1.0, 1, sigma_mul=0.1)
    assert abs((mul / 3.0 - 1.0).std() - 0.1) < 0.005  # N(1, sigma) factor
    x[:, 1] = -6.0  # per-sample abs-max is 6
    rel = noise(implementation, x, 1.0, 2, sigma_add=0.05, relative=1)
    assert abs((rel - x).std() - 0.3) < 0.01


@pytest.mark.parametrize("implementation", ENGINES)
def test_same_seed_reproduces_other_seeds_and_streams_differ(implementation):
    x = np.zeros((32, 2000), np.float32)
    a = noise(implementation, x, 1, 5, sigma_add=1.0, stream=1)
    np.testing.assert_array_equal(a, noise(implementation, x, 1, 5, sigma_add=1.0, stream=1))
    assert abs(np.corrcoef(a.ravel(), noise(implementation, x, 1, 6, sigma_add=1.0, stream=1).ravel())[0, 1]) < 0.05
    assert abs(np.corrcoef(a.ravel(), noise(implementation, x, 1, 5, sigma_add=1.0, stream=2).ravel())[0, 1]) < 0.05


@pytest.mark.parametrize("implementation", ENGINES)
def test_negative_seed_draws_fresh_noise_every_run(implementation):
    feeds = {"X": np.zeros((16, 3000), np.float32), **controls(1.0, -1)}
    session = make_session(op_model("Noise", {"sigma_add": 1.0}, feeds), native=implementation == "native")
    first, second = session.run(None, feeds)[0], session.run(None, feeds)[0]
    assert not np.array_equal(first, second)
    assert abs(first.std() - 1.0) < 0.02


@pytest.mark.parametrize("implementation", ["reference", *ENGINES])
def test_mvm_output_noise_is_normal_in_normalized_units(implementation):
    feeds = {"Y": np.zeros((500, 400), np.float32), "S": np.full((500, 1), 2.0, np.float32), **controls(1.0, 8)}
    attributes = {"weight_scale": 0.5, "out_noise": 0.06, "axis": 1, "stream": 5}
    z = run(implementation, SCHEMAS["MvmOutput"], attributes, feeds)[0]
    normalized = z.ravel() / np.float32(0.06)  # times weight scale 0.5 and input scale 2.0
    assert abs(normalized.mean()) < 0.01
    assert abs(normalized.std() - 1.0) < 0.01
    assert stats.kstest(normalized, "norm").pvalue > 1e-3


@pytest.mark.native
def test_native_normals_are_the_box_muller_pairs_to_a_few_ulp():
    """The native transform's own log and sincos (fast_math.h) against Box-Muller in float64 on
    the same draws: every normal within 4 ulp of its radius (a wrong table entry or series term
    is off by far more), where float32 numpy, rounding 2 pi u first, is not."""
    count, key = 1 << 21, stream_key(SEED, 3)
    got = noise("native", np.zeros((4, count // 4), np.float32), 1.0, SEED, sigma_add=1.0, stream=3).ravel()
    first, second = squares_pair(np.arange(count // 2, dtype=np.uint64), key)
    u1 = ((first >> np.uint64(8)).astype(np.float32) + np.float32(0.5)) * INV_2_24
    radius = np.sqrt(-2.0 * np.log(u1.astype(np.float64)))
    angle = 2.0 * np.pi * (second >> np.uint64(8)).astype(np.float64) / 2.0**24
    truth = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1).ravel()
    ulp = np.repeat(np.spacing(radius.astype(np.float32)), 2).astype(np.float64)
    assert np.all(np.abs(got - truth) <= 4 * ulp)
    assert not np.all(np.abs(normals(key, count) - truth) <= 4 * ulp)


# -- native kernels: threads, errors, whole models -----------------------------------------------
@pytest.mark.native
@pytest.mark.parametrize(("op", "attributes", "shape"), [
    ("Noise", {"sigma_add": 0.2, "sigma_mul": 0.1}, (4, 64, 40, 40)),
    ("Noise", {"sigma_add": 0.2, "relative": 1}, (3, 100000)),
    ("Noise", {"sigma_mul": 0.2, "relative": 1}, (33, 3, 5, 7)),
    ("Quantize", {"bits": 5, "dynamic": 1, "axis": 0}, (4, 64, 40, 40)),
    ("MvmInput", {"inp_bits": 7}, (40, 16, 32, 32)),
    ("MvmInput", {"inp_bits": 7}, (2, 200000)),
    ("MvmOutput", {"out_noise": 0.06, "out_bits": 9, "out_bound": 12.0, "weight_scale": 0.3}, (40, 16, 32, 32)),
    ("MvmOutput", {"out_noise": 0.06, "out_bits": 9, "out_bound": 12.0}, (33, 3, 5, 7)),
    ("DeviceWeights", {"per_channel": 1, "stuck_at_zero": 0.01}, (64, 3, 5, 5)),
    ("AnalogTile", {"out_noise": 0.02, "w_noise": 0.05, "max_input_size": 30, "inp_bits": 7}, (700, 70)),
])
def test_thread_count_does_not_change_results(op, attributes, shape, rng):
    feeds = feeds_for(SCHEMAS[op], attributes, shape, rng)
    results = [run("native", SCHEMAS[op], attributes, feeds, threads=threads) for threads in (1, 2, 3)]
    for other in results[1:]:
        for got, want in zip(other, results[0], strict=True):
            np.testing.assert_array_equal(got, want)


@pytest.mark.native
def test_float16_input_is_refused_with_a_clear_error():
    feeds = {"X": np.zeros((2, 3), np.float16), **controls(1.0, 0)}
    with pytest.raises(ModelError, match=r"Noise node 'the_noise': input X is float16.*float32"):
        make_session(op_model("Noise", {"sigma_add": 0.1}, feeds), native=True)


@pytest.mark.native
def test_mvm_output_rejects_a_scale_of_the_wrong_length():
    feeds = {"Y": np.zeros((4, 10), np.float32), "S": np.ones((3, 1), np.float32), **controls(1.0, 0)}
    with pytest.raises(Exception, match="S has 3 values but Flatten"):
        run("native", SCHEMAS["MvmOutput"], {}, feeds)


def profiled_op_types(model: onnx.ModelProto, native: bool, feeds: dict, directory: Path) -> set[str]:
    """The op types onnxruntime actually executed (function bodies are inlined into standard ops)."""
    options = session_options(native=native)
    options.enable_profiling = True
    options.profile_file_prefix = str(directory / f"profile-{native}")
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    session.run(None, feeds)
    events = json.loads(Path(session.end_profiling()).read_text())
    return {e["args"]["op_name"] for e in events if e.get("cat") == "Node" and "op_name" in e.get("args", {})}


@pytest.mark.native
@pytest.mark.parametrize("preset", ["aihwkit-default", "aihwkit-pcm"])
def test_transformed_model_runs_native_kernels_and_agrees_with_function_bodies(exported_models, rng, tmp_path,
                                                                                preset):
    model = transform_model(exported_models["cnn"], load_preset(preset))
    assert {f.name for f in model.functions} >= {"StandardNormals", "RowAbsMax", "ClipAndRound"}  # helpers stay
    feeds = {model.graph.input[0].name: rng.random((8, 3, 4, 4), dtype=np.float32), "seed": np.array(3, np.int64)}
    if preset == "aihwkit-pcm":
        feeds.update(chip_controls(CHIP_SEED, 86400.0))
    native = make_session(model, native=True).run(None, feeds)[0]
    function = make_session(model, native=False).run(None, feeds)[0]
    np.testing.assert_allclose(native, function, rtol=1e-4, atol=1e-4)
    native_ops = profiled_op_types(native_graph.prepare(model), True, feeds, tmp_path)
    assert native_ops & {"AnalogTile", "AnalogTileEpilogue"} and "AnalogTileConv" in native_ops
    assert "Conv" not in native_ops  # neither the unfolding Conv nor the layer the tile replaced runs
    assert ("DeviceWeights" in native_ops) == (preset == "aihwkit-pcm")  # the chip's weights feed the tiles
    function_ops = profiled_op_types(model, False, feeds, tmp_path)
    assert not function_ops & {"MvmOutput", "AnalogTile", "AnalogTileConv", "DeviceWeights"}


@pytest.mark.native
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


# -- torch twins: what only they do ----------------------------------------------------------------
def _ties(bits: int, bound: float, signed: int) -> np.ndarray:
    """Values exactly halfway between grid points, and beyond the bounds: where rounding rules differ."""
    n = ref.levels(bits, signed)
    step = np.float32(bound) / np.float32(n)
    k = np.arange(-n - 3, n + 3, dtype=np.float32)
    return np.concatenate([(k + np.float32(0.5)) * step, k * step]).astype(np.float32)


@pytest.mark.parametrize(("bits", "bound", "signed"), [(0, 1.0, 1), (4, 1.0, 1), (8, 12.75, 0), (3, 0.7, 0),
                                                       (9, 12.0, 1), (0, float("inf"), 1)])
def test_twin_clip_and_round_is_bit_identical(bits: int, bound: float, signed: int, rng) -> None:
    x = (rng.standard_normal(4096) * (bound if np.isfinite(bound) else 5.0)).astype(np.float32)
    x[::7] = 0.0
    if bits:
        x = np.concatenate([x, _ties(bits, bound, signed)])
    got = tw.clip_and_round(torch.from_numpy(x), bits, bound, signed)
    assert got.dtype == torch.float32
    np.testing.assert_array_equal(got.numpy(), ref.clip_and_round(x, bits, bound, signed))


def test_twin_noise_off_returns_the_input_unchanged(rng) -> None:
    x = torch.from_numpy(rng.standard_normal((4, 10)).astype(np.float32))
    assert torch.equal(tw.noise(x, 0.0, sigma_add=1.0, sigma_mul=1.0), x)
    assert torch.equal(tw.noise(x, 2.0), x)


def test_twin_noise_distribution_matches_the_definition() -> None:
    torch.manual_seed(0)
    x = torch.full((200, 500), 2.0)
    additive = tw.noise(x, 0.5, sigma_add=0.4) - x  # sigma 0.2
    multiplicative = tw.noise(x, 1.0, sigma_mul=0.1) / x - 1  # sigma 0.1
    relative = tw.noise(x, 1.0, sigma_add=0.1, relative=1) - x  # sigma 0.1 * absmax 2
    for sample, sigma in ((additive, 0.2), (multiplicative, 0.1), (relative, 0.2)):
        assert abs(sample.mean().item()) < 4 * sigma / np.sqrt(sample.numel())
        assert sample.std().item() == pytest.approx(sigma, rel=0.01)
    assert not torch.equal(tw.noise(x, 1.0, sigma_add=1.0), tw.noise(x, 1.0, sigma_add=1.0))  # fresh draws


def test_twin_clip_and_round_gradient_is_straight_through_inside_the_range() -> None:
    x = torch.tensor([-2.0, -0.99, -0.3, 0.0, 0.26, 0.99, 1.0, 1.5], requires_grad=True)
    tw.clip_and_round(x, 3, 1.0, 1).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    x.grad = None
    tw.clip_and_round(x, 3, 1.0, 0).sum().backward()  # unsigned: negatives are outside
    assert x.grad.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0]


def test_twin_dynamic_quantization_gradient_is_identity() -> None:
    w = torch.randn(8, 4, 3, 3, requires_grad=True)
    tw.quantize(w, bits=4, dynamic=1, axis=1).mul(torch.arange(w.numel()).reshape(w.shape)).sum().backward()
    torch.testing.assert_close(w.grad, torch.arange(w.numel(), dtype=torch.float32).reshape(w.shape))


def test_twin_mvm_chain_passes_the_layer_gradient_through() -> None:
    """Without noise and quantization the MVM periphery is the identity, and so is its gradient."""
    torch.manual_seed(1)
    x = torch.randn(5, 7, requires_grad=True)
    w = torch.randn(3, 7)
    xn, s = tw.mvm_input(x, axis=-1)
    z = tw.mvm_output(xn @ w.T, s, 1.0, weight_scale=w.abs().max(), axis=-1)
    torch.testing.assert_close(z, x @ w.T)
    z.sum().backward()
    torch.testing.assert_close(x.grad, w.sum(0).expand(5, 7))


def test_twin_half_precision_inputs_compute_in_float32() -> None:
    x = torch.randn(4, 6).half()
    assert tw.noise(x, 1.0, sigma_add=0.1).dtype == torch.float32
    assert tw.quantize(x, bits=4, dynamic=1).dtype == torch.float32


# -- device weights: chips, reads, time ------------------------------------------------------------
def device_weights(implementation: str, w: np.ndarray, seed: int, chip_seed: int, t: float, *,
                   session: ort.InferenceSession | None = None, **attributes) -> tuple[np.ndarray, np.ndarray]:
    feeds = {"W": w, **controls(1.0, seed), **chip_controls(chip_seed, t)}
    if session is not None:
        return tuple(session.run(None, feeds))
    return tuple(run(implementation, SCHEMAS["DeviceWeights"], attributes, feeds))


@pytest.mark.parametrize("implementation", ["reference", *ENGINES])
def test_a_chip_is_fixed_by_chip_seed_and_a_read_by_seed(implementation, rng):
    w = rng.standard_normal((16, 50)).astype(np.float32)
    no_read = {"read_noise": 0}
    first = device_weights(implementation, w, 1, 5, 3600.0, **no_read)
    np.testing.assert_array_equal(device_weights(implementation, w, 2, 5, 3600.0, **no_read)[0], first[0])
    other_chip = device_weights(implementation, w, 1, 6, 3600.0, **no_read)[0]
    assert np.abs(other_chip - first[0]).mean() > 0.01 * np.abs(w).mean()
    read_1, read_2 = (device_weights(implementation, w, seed, 5, 3600.0)[0] for seed in (1, 2))
    assert 0 < np.abs(read_1 - read_2).mean() < np.abs(other_chip - first[0]).mean()


@pytest.mark.parametrize("per_channel", [0, 1])
def test_the_function_body_simulates_big_layers_in_blocks_with_the_same_draws(per_channel, rng):
    """DeviceWeights' body works in blocks of DEVICE_BLOCK weights (a Loop), so that its int64
    draws need memory for a block, not for a language model's head. A layer of two and a bit
    blocks, each block drawing the numbers of its devices' places in the layer, reads out as the
    reference does (the mean over the blocks' sums for the compensation)."""
    w = rng.standard_normal((2 * DEVICE_BLOCK // 500 + 3, 500)).astype(np.float32)
    attributes = {"per_channel": per_channel, "stuck_at_zero": 0.01, "stuck_at_gmax": 0.01}
    got = device_weights("function", w, 3, 7, 3600.0, **attributes)
    want = device_weights("reference", w, 3, 7, 3600.0, **attributes)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5 * np.abs(w).max())
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5)


@pytest.mark.parametrize("implementation", ENGINES)
def test_negative_chip_seed_programs_a_fresh_chip_every_run(implementation, rng):
    feeds = {"W": rng.standard_normal((8, 30)).astype(np.float32), **controls(1.0, 1), **chip_controls(-1, 1.0)}
    session = make_session(op_model("DeviceWeights", {"read_noise": 0}, feeds), native=implementation == "native")
    assert not np.array_equal(session.run(None, feeds)[0], session.run(None, feeds)[0])


@pytest.mark.native
def test_native_chip_kept_between_runs_follows_chip_seed_time_and_weights(rng):
    w = rng.standard_normal((12, 40)).astype(np.float32)
    feeds = {"W": w, **controls(1.0, 3), **chip_controls(4, 1.0)}
    session = make_session(op_model("DeviceWeights", {}, feeds), native=True)
    want = {t: device_weights("reference", w, 3, 4, t) for t in (1.0, 86400.0)}
    for t in (1.0, 86400.0, 1.0, 86400.0):  # each change of time recomputes the drifted chip
        got = device_weights("native", w, 3, 4, t, session=session)
        for g, r in zip(got, want[t], strict=True):
            np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5 * np.abs(w).max())
    changed = w * np.float32(0.5)  # same shape, new weights: a new chip, not the kept one
    got = session.run(None, {**feeds, "W": changed})[0]
    np.testing.assert_allclose(got, device_weights("reference", changed, 3, 4, 1.0)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("implementation", ["reference", *ENGINES])
def test_compensation_restores_the_mean_drift_of_a_pcm_chip(implementation, rng):
    w = rng.standard_normal((64, 64)).astype(np.float32)
    year = 365 * 86400.0
    drifted, alpha = device_weights(implementation, w, 1, 2, year, read_noise=0)
    ratio = np.abs(drifted).mean() / np.abs(w).mean()
    assert 0.4 < ratio < 0.8  # nu ~ 0.05..0.1 over ln(1 year / 20 s) ~ 14: (t/t0)^-nu
    assert abs(float(alpha) * ratio - 1) < 0.05  # the compensated readout is back near the programmed one


# -- the analog tile ------------------------------------------------------------------------------
@pytest.mark.parametrize("implementation", ["reference", "function", NATIVE, "twin"])
def test_tile_bound_management_rescues_only_the_saturated_vector(implementation):
    w = np.ones((1, 4), np.float32)
    x = np.array([[3, 3, 3, 3], [1, 1, 1, 1], [-5, -5, -5, -5]], np.float32)
    attributes = {"noise_management": 0, "inp_bound": 8.0, "out_bound": 10.0, "max_input_size": 4}
    feeds = {"X": x, "W": w, **controls(0.0, 1)}
    clipped = run(implementation, SCHEMAS["AnalogTile"], attributes, feeds)[0]
    np.testing.assert_array_equal(clipped, [[10], [4], [-10]])
    managed = run(implementation, SCHEMAS["AnalogTile"], {**attributes, "bm_rounds": 3}, feeds)[0]
    np.testing.assert_array_equal(managed, [[12], [4], [-20]])  # rounds at 1/2 and 1/4 (the last)


@pytest.mark.parametrize("implementation", ["function", NATIVE, "twin"])
def test_tile_is_exact_at_zero_noise_on_exact_sums(implementation, rng):
    """Integer data: every product and sum is exact, so tiles, mapping, DAC, ADC and bound
    management agree bit for bit whatever the summation order."""
    x = rng.integers(-4, 5, (9, 2, 37)).astype(np.float32)
    w = rng.integers(-2, 3, (11, 37)).astype(np.float32)
    attributes = {"noise_management": 0, "inp_bits": 4, "inp_bound": 7.0, "out_bits": 6, "out_bound": 31.0,
                  "bm_rounds": 4, "max_input_size": 10, "max_output_size": 4, "weight_scaling_omega": 2.0,
                  "weight_scaling_columnwise": 1}
    feeds = {"X": x, "W": w, **controls(0.0, 1)}
    want = run("reference", SCHEMAS["AnalogTile"], attributes, feeds)[0]
    np.testing.assert_array_equal(run(implementation, SCHEMAS["AnalogTile"], attributes, feeds)[0], want)


def half_steps(step: np.float32, levels: int) -> np.ndarray:
    """Every half-step (j + 1/2) step of a converter's grid, out to four times its bound, and their
    float32 neighbours a few ulp away, where dividing by the step and multiplying by its reciprocal
    can round to different levels."""
    ties = (np.arange(-4 * levels, 4 * levels) + 0.5).astype(np.float32) * step
    ulps = np.spacing(np.abs(ties))
    return np.concatenate([ties + np.float32(d) * ulps for d in (-3, -2, -1, 0, 1, 2, 3)]).astype(np.float32)


@pytest.mark.parametrize("implementation", ["function", NATIVE])
@pytest.mark.parametrize("converter", ["inp", "out"])
def test_tile_converters_round_half_steps_like_numpy(implementation, converter):
    """With identity weights the tile returns its DAC's (or ADC's) values alone: at and around every
    half-step they are numpy's x / step rounded half to even, bit for bit."""
    bits, bound = 7, 0.9
    x = half_steps(np.float32(bound) / np.float32(63), 63)
    x = np.resize(x, (len(x) + 7) // 8 * 8).reshape(-1, 8)
    attributes = {"noise_management": 0, f"{converter}_bits": bits, f"{converter}_bound": bound,
                  "inp_bound" if converter == "out" else "out_bound": float("inf")}
    feeds = {"X": x, "W": np.eye(8, dtype=np.float32), **controls(0.0, 1)}
    want = run("reference", SCHEMAS["AnalogTile"], attributes, feeds)[0]
    np.testing.assert_array_equal(run(implementation, SCHEMAS["AnalogTile"], attributes, feeds)[0], want)


@pytest.mark.native
@pytest.mark.parametrize("peak", [1.0, 0.75, 3e-5])
def test_native_tile_dac_of_scaled_vectors_rounds_half_steps_like_numpy(peak):
    """With noise management the DAC rounds x * (1 / abs-max) / step (the native kernel from the one
    product x * (scale / step), unclipped at bound 1): vectors whose scaled values lie at and around
    every half-step of the grid, inside the bound, give numpy's levels bit for bit."""
    step = np.float32(1.0) / np.float32(63)
    scale = np.float32(1.0) / np.float32(peak)
    scaled = half_steps(step, 63)
    scaled = scaled[np.abs(scaled) < 1]
    x = (scaled / scale).astype(np.float32)
    x = np.resize(x, (len(x) + 6) // 7 * 7).reshape(-1, 7)
    x = np.concatenate([np.full((len(x), 1), peak, np.float32), x], axis=1)  # each vector's abs-max is `peak`
    attributes = {"noise_management": 1, "inp_bits": 7, "inp_bound": 1.0, "out_bound": float("inf")}
    feeds = {"X": x, "W": np.eye(8, dtype=np.float32), **controls(0.0, 1)}
    want = run("reference", SCHEMAS["AnalogTile"], attributes, feeds)[0]
    np.testing.assert_array_equal(run("native", SCHEMAS["AnalogTile"], attributes, feeds)[0], want)


@pytest.mark.native
@pytest.mark.parametrize(("bound", "levels"), [("1", "63"), ("1.5", "127")])
def test_dac_quotient_without_division_rounds_like_the_division_for_every_float(bound, levels, tmp_path):
    """The noise-managed DAC's division-free quotient (Markstein's correction) gives the division's
    level for every float input of |a| <= 1.01: tools/check_dac_quotient.cc, compiled as the kernels
    are (the system g++), tries all of them."""
    checker = tmp_path / "check_dac_quotient"
    compiler = build.compiler()
    assert compiler is not None, "no C++ compiler (set CXX)"
    subprocess.run([compiler, "-O2", "-march=native", "-ffp-contract=off", "-o", str(checker),
                    str(Path(__file__).parent.parent / "tools" / "check_dac_quotient.cc")], check=True)
    result = subprocess.run([str(checker), bound, levels], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    assert " 0 levels not the division's" in result.stdout


@pytest.mark.native
@pytest.mark.parametrize(("seed", "w_noise"), [(0, 0.0), (5, 0.0), (3, 0.05)])
def test_native_tile_convolution_reads_patches_like_the_function_body(seed, w_noise, rng):
    """AnalogTileConv (native sessions) against the file's unfold-Conv + AnalogTile function bodies:
    padding, stride, dilation, tiles and bound management, with output (and weight) noise of the
    same stream."""
    weight = (rng.standard_normal((5, 6, 3, 2)) * 2).astype(np.float32)
    graph = h.make_graph([h.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 0, 2, 1], strides=[2, 1],
                                      dilations=[1, 2])], "conv",
                         [h.make_tensor_value_info("x", TensorProto.FLOAT, [3, 6, 9, 7])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                         [onnx.numpy_helper.from_array(weight, "w")])
    config = load_preset("aihwkit-default").with_overrides(["max_input_size=10", "max_output_size=3",
                                                            f"w_noise={w_noise}"])
    model = transform_model(h.make_model(graph, opset_imports=[h.make_opsetid("", 13)]), config)
    assert [n.op_type for n in native_graph.prepare(model).graph.node if n.domain == DOMAIN] == ["AnalogTileConv"]
    feeds = {"x": rng.standard_normal((3, 6, 9, 7)).astype(np.float32), "seed": np.array(seed, np.int64)}
    native = make_session(model, native=True).run(None, feeds)[0]
    function = make_session(model, native=False).run(None, feeds)[0]
    assert native.shape == function.shape
    assert np.isclose(native, function, rtol=1e-4, atol=1e-4).mean() > 0.99


@pytest.mark.native
@pytest.mark.parametrize(("images", "size"), [(32, (64, 64)), (132, (31, 33))])
def test_native_tile_convolution_streams_a_large_output_with_the_same_bits(images, size, rng):
    """An output of 8 MiB or more goes out with streaming stores (where a channel's run starts a
    vector: 64 x 64 images; 31 x 33 ones mostly do not): the first images give the bits they give
    in a batch small enough to be stored as usual, noise and bound management included."""
    weight = rng.standard_normal((16, 4, 1, 1)).astype(np.float32)
    shape = [images, 4, *size]
    graph = h.make_graph([h.make_node("Conv", ["x", "w"], ["y"], name="conv")], "conv",
                         [h.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, *size])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                         [onnx.numpy_helper.from_array(weight, "w")])
    model = transform_model(h.make_model(graph, opset_imports=[h.make_opsetid("", 13)]), load_preset("aihwkit-default"))
    session = make_session(model, native=True)
    x = rng.standard_normal(shape).astype(np.float32)
    large = session.run(None, {"x": x, "seed": np.array(6, np.int64)})[0]
    small = session.run(None, {"x": x[:8], "seed": np.array(6, np.int64)})[0]
    assert large.nbytes >= 8 << 20 > small.nbytes
    np.testing.assert_array_equal(large[:8], small)


# the tile attributes a narrow-output case sets on the transformed file's AnalogTile
NARROW_SETTINGS = {"default": {},
                   "split-saturating": {"max_input_size": 20, "max_output_size": 3, "out_bound": 0.5},
                   "pass-through": {"noise_management": 0, "inp_bits": 0, "out_bits": 0, "out_noise": 0.0,
                                    "inp_bound": float("inf"), "out_bound": float("inf")}}


@pytest.mark.native
@pytest.mark.parametrize(("size", "pads", "dilation"),
                         [(8, [1, 1, 1, 1], 1), (4, [1, 1, 1, 1], 1), (8, [2, 2, 2, 2], 2)])
@pytest.mark.parametrize("settings", NARROW_SETTINGS)
def test_native_tile_convolution_of_outputs_narrower_than_a_vector(size, pads, dilation, settings, rng):
    """Outputs as wide as the image and narrower than a SIMD vector (8 wide with AVX-512, 4 with
    either) read a slab laid out per kernel column, where a vector spans output rows: the numbers of
    the function bodies over blocks of several images, with tiles that split channels and bound
    management, and pass-through, where the product is read straight from the slab and written
    without a total."""
    weight = (rng.standard_normal((10, 6, 3, 3)) * 0.5).astype(np.float32)
    graph = h.make_graph([h.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=pads, dilations=[dilation] * 2)],
                         "conv", [h.make_tensor_value_info("x", TensorProto.FLOAT, [7, 6, size, size])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                         [onnx.numpy_helper.from_array(weight, "w")])
    model = transform_model(h.make_model(graph, opset_imports=[h.make_opsetid("", 13)]), load_preset("aihwkit-default"))
    for node in (n for n in model.graph.node if n.op_type == "AnalogTile"):
        for attribute in node.attribute:
            if attribute.name in NARROW_SETTINGS[settings]:
                value = NARROW_SETTINGS[settings][attribute.name]
                setattr(attribute, "f" if isinstance(value, float) else "i", value)
    assert [n.op_type for n in native_graph.prepare(model).graph.node if n.domain == DOMAIN] == ["AnalogTileConv"]
    feeds = {"x": rng.standard_normal((7, 6, size, size)).astype(np.float32), "seed": np.array(4, np.int64)}
    native = make_session(model, native=True).run(None, feeds)[0]
    function = make_session(model, native=False).run(None, feeds)[0]
    assert native.shape == function.shape == (7, 10, size, size)
    assert np.isclose(native, function, rtol=1e-4, atol=1e-4).mean() > 0.99


@pytest.mark.native
@pytest.mark.parametrize("outputs", [5, 16, 24, 48, 64, 100])
def test_native_tile_register_blocks_cover_every_output_width(outputs, rng):
    """Outputs are padded to whole register blocks (8 with AVX-512; with AVX2 6 x 2 where that pads
    nothing, as at 24 and 48, else 4 x 3), and 301 vectors end in a short block whose last SIMD
    vectors take the one-vector-wide micro-kernel."""
    attributes = SCHEMAS["AnalogTile"].cases["aihwkit-default"]
    feeds = {"X": rng.standard_normal((301, 70)).astype(np.float32),
             "W": (rng.standard_normal((outputs, 70)) * 0.3).astype(np.float32), **controls(1.0, 9)}
    got = run("native", SCHEMAS["AnalogTile"], attributes, feeds)[0]
    want = run("reference", SCHEMAS["AnalogTile"], attributes, feeds)[0]
    assert np.isclose(got, want, rtol=1e-4, atol=1e-4).mean() > 0.99


def test_tile_splits_like_aihwkit():
    assert ref.split_sizes(1024, 512) == [512, 512]
    assert ref.split_sizes(576, 512) == [288, 288]
    assert ref.split_sizes(1030, 512) == [344, 343, 343]
    assert ref.split_sizes(100, 0) == [100]


# -- the tile's weight read noise (forward.w_noise) ------------------------------------------------
@pytest.mark.parametrize("implementation", ["reference", "function", NATIVE, "twin"])
@pytest.mark.parametrize("attributes", [{}, SCHEMAS["AnalogTile"].cases["aihwkit-default"]], ids=["plain", "aihwkit"])
def test_tile_without_weight_noise_is_bit_identical_to_before(implementation, attributes, rng):
    """w_noise = 0 given explicitly computes exactly what a node without the attribute computed."""
    feeds = feeds_for(SCHEMAS["AnalogTile"], attributes, (9, 70), rng)
    before = run(implementation, SCHEMAS["AnalogTile"], attributes, feeds)[0]
    after = run(implementation, SCHEMAS["AnalogTile"], {**attributes, "w_noise": 0.0}, feeds)[0]
    np.testing.assert_array_equal(after, before)


@pytest.mark.parametrize("implementation", ["reference", "function", NATIVE, "twin"])
def test_tile_weight_noise_has_the_variance_of_noise_on_every_weight(implementation, rng):
    """Zero weights read with noise: every output is normal with variance T o^2 + v^2 |u|^2 (o, v the
    output and weight noise sigmas times noise_scale, T input tiles of 20 inputs, u the vector as the
    DAC leaves it: here the input itself), for vectors whose weight-noise share runs from 0 to 99 %.
    The mean of z^2 over each group of 100 000 normalized outputs is 1 within 6 of its standard
    deviations sqrt(2 / 100 000); the twin draws its own normals (torch, seeded)."""
    noise_scale, out_noise, w_noise, outputs = 1.5, 0.02, 0.1, 500
    norms = np.repeat(np.array([0.0, 0.05, 0.5, 2.0], np.float32), 200)  # 4 groups of 200 vectors
    direction = rng.standard_normal((norms.size, 40)).astype(np.float32)
    x = (direction / np.linalg.norm(direction, axis=1, keepdims=True) * norms[:, None]).astype(np.float32)
    attributes = {"noise_management": 0, "inp_bound": 4.0, "out_noise": out_noise, "w_noise": w_noise,
                  "max_input_size": 20, "stream": 6}
    feeds = {"X": x, "W": np.zeros((outputs, 40), np.float32), **controls(noise_scale, 11)}
    if implementation == "twin":
        y = tw.analog_tile(torch.from_numpy(x), torch.from_numpy(feeds["W"]), noise_scale,
                           generator=torch.Generator().manual_seed(11),
                           **{k: v for k, v in attributes.items() if k != "stream"}).numpy()
    else:
        y = run(implementation, SCHEMAS["AnalogTile"], attributes, feeds)[0]
    squares = np.sum(x.astype(np.float64) ** 2, axis=1, keepdims=True)
    variance = 2 * (noise_scale * out_noise) ** 2 + (noise_scale * w_noise) ** 2 * squares
    normalized = (y / np.sqrt(variance)).reshape(4, -1)
    assert np.all(np.abs((normalized**2).mean(axis=1) - 1) < 6 * np.sqrt(2 / normalized.shape[1]))
    assert np.all(np.abs(normalized.mean(axis=1)) < 6 / np.sqrt(normalized.shape[1]))


def test_tile_weight_noise_reads_the_vector_after_noise_management_and_the_dac():
    """The norm is of what the tile reads: a vector scaled by its abs-max and gridded by the DAC."""
    x = np.array([[4.0, -2.0, 1.3]], np.float32)
    u = np.rint(x / 4.0 / np.float32(1 / 3)) * np.float32(1 / 3)  # 3-bit DAC: step 1/3 of bound 1
    feeds = {"X": x, "W": np.zeros((2, 3), np.float32), **controls(1.0, 0)}
    y = run("reference", SCHEMAS["AnalogTile"], {"inp_bits": 3, "w_noise": 0.5}, feeds)[0]
    z = normals(stream_key(0, 0), 2)
    np.testing.assert_allclose(y[0], np.float32(0.5) * np.linalg.norm(u) * z * 4.0, rtol=1e-6)
