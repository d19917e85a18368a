"""QONNX quantizers (Quant, BipolarQuant, Trunc) become standard ONNX with QONNX's arithmetic, and a
QONNX network goes through transform and evaluate."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper
from onnx import helper as h

from analog_onnx.config import load_preset
from analog_onnx.data import Dataset
from analog_onnx.errors import ModelError
from analog_onnx.evaluate import RunSettings, evaluate
from analog_onnx.passes.qonnx_to_standard import QonnxToStandardPass
from analog_onnx.transform import analog_sites, standard_model, transform_model

QONNX = "qonnx.custom_op.general"
F32 = np.float32


# -- QONNX's definitions, written from its operator docs, in float32 ---------------------------
def int_bounds(bits: int, signed: int, narrow: int) -> tuple[float, float]:
    if signed:
        return -(2.0 ** (bits - 1)) + narrow, 2.0 ** (bits - 1) - 1
    return 0.0, 2.0 ** bits - 1 - narrow


ROUND = {"ROUND": np.round, "CEIL": np.ceil, "FLOOR": np.floor}


def quant(x, scale, zeropt, bits, signed=1, narrow=0, rounding_mode="ROUND"):
    y = x / F32(scale) + F32(zeropt) if np.ndim(scale) == 0 else x / scale.astype(F32) + F32(zeropt)
    if bits == 1 and signed:
        y = np.where(y >= 0, F32(1), F32(-1))
    else:
        low, high = int_bounds(bits, signed, narrow)
        y = ROUND[rounding_mode.upper()](np.minimum(np.maximum(y, F32(low)), F32(high)))
    return ((y - F32(zeropt)) * np.asarray(scale, F32)).astype(F32)


def bipolar_quant(x, scale):
    return (np.where(x >= 0, F32(1), F32(-1)) * F32(scale)).astype(F32)


def trunc_v1(x, scale, zeropt, in_bits, out_bits, rounding_mode="FLOOR"):
    y = np.round(x / F32(scale) + F32(zeropt)) / F32(2.0 ** (in_bits - out_bits))
    return ((ROUND[rounding_mode.upper()](y) - F32(zeropt)) * F32(scale)).astype(F32)


def trunc_v2(x, scale, zeropt, in_bits, out_scale, out_bits, signed=1, narrow=0, rounding_mode="FLOOR"):
    trunc_scale = F32(2.0 ** np.round(np.log2(F32(out_scale) / F32(scale))))
    y = np.round(x / F32(scale) + F32(zeropt)) / trunc_scale
    low, high = int_bounds(out_bits, signed, narrow)
    y = ROUND[rounding_mode.upper()](np.clip(y, F32(low), F32(high)))
    return ((y - F32(zeropt) / trunc_scale) * F32(out_scale)).astype(F32)


# -- one-node models ---------------------------------------------------------------------------
def one_node(op_type: str, params: list[np.ndarray], domain: str = QONNX, **attributes) -> onnx.ModelProto:
    names = [f"p{i}" for i in range(len(params))]
    node = h.make_node(op_type, ["x", *names], ["y"], domain=domain, name="q", **attributes)
    graph = h.make_graph([node], "q", [h.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3, 50])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, [4, 3, 50])],
                         [numpy_helper.from_array(np.asarray(p), n) for p, n in zip(params, names, strict=True)])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 13), h.make_opsetid(domain, 1)])


def samples(rng: np.random.Generator, scale: float) -> np.ndarray:
    """Values around the grid, half of them exactly on rounding ties."""
    x = rng.uniform(-300, 300, (4, 3, 50)).astype(F32) * F32(scale)
    ties = (np.rint(x / F32(scale)) + F32(0.5)) * F32(scale)
    return np.where(rng.random(x.shape) < 0.5, ties, x).astype(F32)


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


per_channel = np.array([0.02, 0.05, 0.1], F32).reshape(1, 3, 1)
CASES = [  # (op, params, attributes, numpy definition, expected standard ops)
    ("Quant", [F32(0.03), F32(0), F32(8)], {"signed": 1, "narrow": 0}, quant, {"QuantizeLinear"}),
    ("Quant", [F32(0.03), F32(0), F32(8)], {"signed": 0, "narrow": 0}, quant, {"QuantizeLinear"}),
    ("Quant", [F32(0.03), F32(0), F32(8)], {"signed": 1, "narrow": 1}, quant, {"Clip", "Round"}),
    ("Quant", [per_channel, F32(0), F32(4)], {"signed": 1, "narrow": 1}, quant, {"Clip", "Round"}),
    ("Quant", [F32(0.1), F32(3), F32(5)], {"signed": 0, "narrow": 0, "rounding_mode": "floor"}, quant, {"Floor"}),
    ("Quant", [F32(0.1), F32(0), F32(6)], {"signed": 1, "narrow": 0, "rounding_mode": "CEIL"}, quant, {"Ceil"}),
    ("Quant", [F32(0.5), F32(0), F32(1)], {"signed": 1, "narrow": 0}, quant, {"Where"}),
    ("Quant", [F32(0.05), F32(0), F32(12)], {"signed": 1, "narrow": 0}, quant, {"Clip", "Round"}),
    ("BipolarQuant", [F32(0.25)], {}, bipolar_quant, {"Where"}),
    ("Trunc", [F32(0.01), F32(0), F32(12), F32(6)], {"rounding_mode": "FLOOR"}, trunc_v1, {"Floor"}),
    ("Trunc", [F32(0.01), F32(2), F32(12), F32(6)], {"rounding_mode": "ROUND"}, trunc_v1, {"Round"}),
    ("Trunc", [F32(0.01), F32(0), F32(12), F32(0.08), F32(4)], {"signed": 1, "narrow": 0}, trunc_v2, {"Clip"}),
]


@pytest.mark.parametrize(("op_type", "params", "attributes", "definition", "ops"), CASES)
def test_quantizers_convert_with_qonnx_arithmetic(op_type, params, attributes, definition, ops, rng):
    x = samples(rng, float(np.min(params[0])))
    converted = standard_model(one_node(op_type, params, **attributes))
    kinds = {n.op_type for n in converted.graph.node}
    assert ops <= kinds and not {n.domain for n in converted.graph.node} - {""}
    assert QONNX not in {o.domain for o in converted.opset_import}
    np.testing.assert_array_equal(run(converted, x), definition(x, *params, **attributes))


def test_finn_domain_and_intquant_name_are_accepted(rng):
    x = samples(rng, 0.1)
    converted = standard_model(one_node("IntQuant", [F32(0.1), F32(0), F32(4)], domain="finn.custom_op.general",
                                        signed=1, narrow=0))
    np.testing.assert_array_equal(run(converted, x), quant(x, F32(0.1), F32(0), 4))


def test_refuses_what_it_cannot_convert_exactly():
    with pytest.raises(ModelError, match="rounding mode HALF_UP"):
        standard_model(one_node("Quant", [F32(0.1), F32(0), F32(4)], rounding_mode="HALF_UP"))
    model = one_node("Quant", [F32(0.1), F32(0), F32(4)])
    model.graph.initializer.pop(0)  # the scale becomes a runtime input
    model.graph.input.append(h.make_tensor_value_info("p0", TensorProto.FLOAT, []))
    with pytest.raises(ModelError, match="must be constants"):
        standard_model(model)


def test_pass_requires_opset_13():
    import onnx_ir as ir

    model = one_node("BipolarQuant", [F32(1.0)])
    model.opset_import[0].version = 11
    with pytest.raises(ir.passes.PreconditionError):
        QonnxToStandardPass()(ir.serde.deserialize_model(model))


# -- a quantized network -----------------------------------------------------------------------
def qonnx_mlp(rng: np.random.Generator) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Brevitas-style: 8-bit input Quant, 4-bit narrow weight Quants, a 4-bit unsigned ReLU Quant."""
    w1, w2 = rng.standard_normal((64, 16)).astype(F32) * 0.3, rng.standard_normal((16, 10)).astype(F32) * 0.3
    tensors = {"w1": w1, "w2": w2, "b1": rng.standard_normal(16).astype(F32) * 0.1,
               "s_in": F32(0.02), "s_w1": (np.abs(w1).max(axis=0) / 7).astype(F32), "s_w2": F32(np.abs(w2).max() / 7),
               "s_act": F32(0.1), "zero": F32(0), "b8": F32(8), "b4": F32(4)}
    nodes = [h.make_node("Quant", ["x", "s_in", "zero", "b8"], ["xq"], domain=QONNX, signed=1, narrow=0,
                         rounding_mode="ROUND", name="quant_in"),
             h.make_node("Quant", ["w1", "s_w1", "zero", "b4"], ["w1q"], domain=QONNX, signed=1, narrow=1,
                         name="quant_w1"),
             h.make_node("MatMul", ["xq", "w1q"], ["m1"], name="fc1"),
             h.make_node("Add", ["m1", "b1"], ["a1"], name="bias1"),
             h.make_node("Relu", ["a1"], ["r1"], name="relu1"),
             h.make_node("Quant", ["r1", "s_act", "zero", "b4"], ["r1q"], domain=QONNX, signed=0, narrow=0,
                         name="quant_act"),
             h.make_node("Quant", ["w2", "s_w2", "zero", "b4"], ["w2q"], domain=QONNX, signed=1, narrow=1,
                         name="quant_w2"),
             h.make_node("MatMul", ["r1q", "w2q"], ["y"], name="fc2")]
    graph = h.make_graph(nodes, "qonnx_mlp", [h.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
                         [numpy_helper.from_array(np.asarray(v), k) for k, v in tensors.items()])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 13), h.make_opsetid(QONNX, 1)]), tensors


def mlp_numpy(x: np.ndarray, t: dict[str, np.ndarray]) -> np.ndarray:
    xq = quant(x, t["s_in"], F32(0), 8)
    h1 = xq @ quant(t["w1"], t["s_w1"], F32(0), 4, narrow=1) + t["b1"]
    r1q = quant(np.maximum(h1, F32(0)), t["s_act"], F32(0), 4, signed=0)
    return r1q @ quant(t["w2"], t["s_w2"], F32(0), 4, narrow=1)


def test_qonnx_network_transforms_and_evaluates(rng):
    model, tensors = qonnx_mlp(rng)
    x = rng.standard_normal((200, 64)).astype(F32)
    ideal = transform_model(model, load_preset("ideal"))
    np.testing.assert_allclose(run(ideal, x), mlp_numpy(x, tensors), rtol=1e-5, atol=1e-5)  # MatMul sums in any order
    assert [s.name for s in analog_sites(model, load_preset("aihwkit-default"))] == ["fc1", "fc2"]  # behind Quant
    labels = mlp_numpy(x, tensors).argmax(axis=1)
    report = evaluate(model, Dataset(x, labels, 10, "qonnx-probe"), config="aihwkit-default", noise_scales="0,1",
                      settings=RunSettings(repeats=2, seed=0, batch_size=64))
    result = report.models[0]
    assert result.clean_accuracy == 1.0
    assert result.points[1].accuracy.mean < result.points[0].accuracy.mean <= 1.0
