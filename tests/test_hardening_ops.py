"""The ops on hostile values and shapes, in every implementation: subnormal abs-max, empty
batches, layers without inputs; nodes their op's schema does not admit."""

from __future__ import annotations

import math
import re

import numpy as np
import onnx_ir as ir
import pytest
import torch
from helpers import op_model

from analog_onnx.errors import ModelError
from analog_onnx.ops import DOMAIN, OPS
from analog_onnx.ops import reference as ref
from analog_onnx.ops import torch_twins as tw
from analog_onnx.ops.nodes import check_nodes
from analog_onnx.ops.schema import SCHEMAS
from analog_onnx.runtime import make_session

NATIVE = pytest.param("native", marks=pytest.mark.native)
TILE = {"inp_bits": 7, "out_bits": 9, "out_bound": 12.0, "bm_rounds": 3}
NOISY_TILE = {**TILE, "out_noise": 0.06}
CONTROLS = {"noise_scale": np.array(1.0, np.float32), "seed": np.array(5, np.int64)}


def outputs(implementation: str, op: str, attributes: dict, feeds: dict) -> np.ndarray:
    """The op's first output from "reference", "function", "native" or "twin" (deterministic ops only)."""
    if implementation in ("function", "native"):
        session = make_session(op_model(op, attributes, feeds), native=implementation == "native")
        return session.run(None, feeds)[0]
    name = {"AnalogTile": "analog_tile", "MvmInput": "mvm_input", "Quantize": "quantize", "Noise": "noise"}[op]
    args = [a for key, a in feeds.items() if key != "seed" or implementation == "reference"]
    if implementation == "twin":
        args = [torch.from_numpy(a) if a.ndim else float(a) for a in args]
    result = getattr(ref if implementation == "reference" else tw, name)(*args, **attributes)
    first = result[0] if isinstance(result, tuple) else result
    return first.numpy() if isinstance(first, torch.Tensor) else first


def subnormal_rows(shape: tuple[int, int]) -> np.ndarray:
    """Random rows, one all zero, one whose largest magnitude is subnormal (below 2**-126)."""
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    x[0] = 0.0
    x[1] = 0.0
    x[1, :3] = [1e-39, -2e-39, 3e-45]
    return x


CASES = [
    ("AnalogTile", TILE, lambda x: {"X": x, "W": np.random.default_rng(1).standard_normal((5, 8)).astype(np.float32),
                                    **CONTROLS}),
    ("AnalogTile", {"max_input_size": 3}, lambda x: {"X": x, "W": np.ones((5, 8), np.float32), **CONTROLS}),
    ("MvmInput", {"inp_bits": 7}, lambda x: {"X": x}),
    ("Quantize", {"bits": 4, "dynamic": 1, "axis": 1}, lambda x: {"X": x}),
]


@pytest.mark.parametrize("implementation", ["reference", "function", NATIVE, "twin"])
@pytest.mark.parametrize(("op", "attributes", "feeds"), CASES, ids=lambda c: c if isinstance(c, str) else None)
def test_a_subnormal_abs_max_counts_as_zero_in_every_implementation(op, attributes, feeds, implementation):
    x = subnormal_rows((4, 8))
    got = outputs(implementation, op, attributes, feeds(x))
    assert np.isfinite(got).all()
    want = outputs("reference", op, attributes, feeds(x))
    tolerance = 1e-5 if op == "AnalogTile" else 0  # a product: the summation order differs
    np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance)
    if op == "AnalogTile" and attributes.get("inp_bits"):  # the DAC rounds the unscaled subnormals to zero
        np.testing.assert_array_equal(got[1], got[0])


def test_the_reference_scale_of_a_subnormal_row_is_one():
    np.testing.assert_array_equal(ref.row_absmax(subnormal_rows((3, 8)), 1).ravel()[:2], [1.0, 1.0])


@pytest.mark.parametrize("implementation", ["function", NATIVE])
@pytest.mark.parametrize("attributes", [NOISY_TILE, {"out_noise": 0.5, "weight_scaling_omega": 1.0}])
def test_a_tile_without_inputs_is_the_adc_of_its_noise(attributes, implementation):
    feeds = {"X": np.ones((3, 0), np.float32), "W": np.ones((7, 0), np.float32), **CONTROLS}
    want = ref.analog_tile(*feeds.values(), **attributes)
    assert want.shape == (3, 7) and np.any(want != 0)
    for _ in range(3):  # the same each time: nothing uninitialised is read
        np.testing.assert_allclose(outputs(implementation, "AnalogTile", attributes, feeds), want, atol=1e-6)


@pytest.mark.parametrize("implementation", ["function", NATIVE])
@pytest.mark.parametrize(("op", "attributes", "feeds"), [
    ("AnalogTile", NOISY_TILE, {"X": np.ones((0, 5), np.float32), "W": np.ones((7, 5), np.float32), **CONTROLS}),
    ("AnalogTile", NOISY_TILE, {"X": np.ones((2, 0, 5), np.float32), "W": np.ones((7, 5), np.float32), **CONTROLS}),
    ("MvmInput", {"inp_bits": 7}, {"X": np.ones((0, 5), np.float32)}),
    ("Noise", {"sigma_add": 0.3, "relative": 1}, {"X": np.ones((0, 5), np.float32), **CONTROLS}),
    ("Noise", {"sigma_add": 0.3, "relative": 1}, {"X": np.ones((4, 0), np.float32), **CONTROLS}),
], ids=["tile", "tile 3-D", "mvm input", "noise", "noise without features"])
def test_an_empty_batch_gives_an_empty_result(op, attributes, feeds, implementation):
    got = outputs(implementation, op, attributes, feeds)
    want = getattr(ref, {"AnalogTile": "analog_tile", "MvmInput": "mvm_input", "Noise": "noise"}[op])(
        *feeds.values(), **attributes)
    assert got.shape == (want[0] if isinstance(want, tuple) else want).shape and got.size == 0


def one_node(op: str, inputs: list[str], attributes: dict, outputs: int | None = None) -> ir.Graph:
    """A graph of one node of ``op``; an input named "" is left out."""
    values = {name: ir.Value(name=name) for name in inputs if name}
    node = ir.node(op, [values.get(name) for name in inputs], attributes, domain=DOMAIN, name="the node",
                   num_outputs=outputs or (len(SCHEMAS[op].outputs) if op in SCHEMAS else 1))
    return ir.Graph(list(values.values()), node.outputs, nodes=[node])


@pytest.mark.parametrize("op, case", [(op, case) for op in OPS for case in op.cases],
                         ids=lambda value: value.name if hasattr(value, "name") else value)
def test_every_declared_case_passes_the_node_check(op, case):
    check_nodes(one_node(op.name, list(op.inputs), op.cases[case]))


@pytest.mark.parametrize("op, inputs", [("AnalogTileEpilogue", ["X", "", "noise_scale", "seed"]),
                                        ("NoiseChain", ["X", "noise_scale", "seed"]),
                                        ("StoredWeights", [])])
def test_an_optional_input_may_be_left_out(op, inputs):
    chain = {"steps": [0], "sigma_add": [0.1], "sigma_mul": [0.0], "streams": [0]} if op == "NoiseChain" else {}
    check_nodes(one_node(op, inputs, chain))


@pytest.mark.parametrize("op, inputs, attributes, outputs, message", [
    ("NoiseChain", ["X", "noise_scale", "seed"], {"steps": [0], "sigma_add": [0.1], "sigma_mul": [0.0]}, None,
     "attribute streams is required"),
    ("AnalogTileConv", ["X", "W", "noise_scale", "seed", "scale", "shift"], {"pads": [1, 1]}, None,
     "attribute pads must have 4 values, got 2"),
    ("MvmOutput", ["Y", "S", "noise_scale", "seed"], {"out_noise": math.nan}, None,
     "attribute out_noise must be a finite number >= 0, got nan"),
    ("MvmInput", ["X"], {}, 1, "has 1 outputs, not 2 (Xn, S)"),
    ("Quantize", ["X"], {"bits": 4, "axis": "1"}, None, "attribute axis must be an integer, not a string"),
    ("Nope", ["X"], {}, None, "ai.analog has no op Nope"),
])
def test_a_node_its_schema_does_not_admit_is_named(op, inputs, attributes, outputs, message):
    with pytest.raises(ModelError, match=re.escape(f"ai.analog.{op} node 'the node': {message}") + "$"):
        check_nodes(one_node(op, inputs, attributes, outputs))
