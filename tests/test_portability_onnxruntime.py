"""Transformed models load and run on the oldest onnxruntime ``pyproject.toml`` allows and on one in
the middle, through the function bodies alone, giving what the installed onnxruntime gives."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper
from onnx import helper as h
from side_onnxruntime import oldest_onnxruntime, run_side, side_python

from analog_onnx.config import load_preset, preset_names
from analog_onnx.runtime import make_session
from analog_onnx.transform import read_analog_metadata, transform_model

MIDDLE = "1.23"
OPSETS = (13, 17, 21)  # 21: the newest opset the oldest supported onnxruntime knows


def conv_mlp(opset: int, rng: np.random.Generator) -> onnx.ModelProto:
    """Conv, Relu, Flatten, Gemm: a dense and a convolutional analog layer, dynamic batch."""
    def weight(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.3, name)

    nodes = [h.make_node("Conv", ["x", "cw", "cb"], ["c"], pads=[1, 1, 1, 1]),
             h.make_node("Relu", ["c"], ["r"]),
             h.make_node("Flatten", ["r"], ["f"]),
             h.make_node("Gemm", ["f", "gw", "gb"], ["y"], transB=1)]
    graph = h.make_graph(nodes, "conv_mlp", [h.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 5, 5])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6])],
                         [weight("cw", 3, 2, 3, 3), weight("cb", 3), weight("gw", 6, 75), weight("gb", 6)])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", opset)], ir_version=8)


@pytest.mark.parametrize("opset", range(13, onnx.defs.onnx_opset_version() + 1))
def test_function_bodies_load_and_draw_at_every_opset(opset):
    """Through the function bodies alone: a seed reproduces the noise, a negative seed draws fresh
    noise on each run (no onnxruntime implements the Random* ops from opset 22 on)."""
    x = np.random.default_rng(0).standard_normal((2, 2, 5, 5)).astype(np.float32)
    for preset in preset_names():
        config = load_preset(preset)
        if not config.has_noise:
            continue
        analog = transform_model(conv_mlp(opset, np.random.default_rng(opset)), config)
        session = make_session(analog, native=False)
        inputs = read_analog_metadata(analog).inputs
        seeds = [inputs["seed"], inputs["chip_seed"]]  # per read and per chip (device presets)
        runs = {s: [session.run(None, {"x": x, **{name: np.array(s, np.int64) for name in seeds}})[0]
                    for _ in range(2)] for s in (7, -1)}
        np.testing.assert_array_equal(*runs[7])
        assert not np.array_equal(*runs[-1]), preset


@pytest.fixture(scope="module", params=[oldest_onnxruntime(), MIDDLE])
def side(request) -> Path:
    python, reason = side_python(request.param)
    if python is None:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return python


@pytest.mark.slow
@pytest.mark.parametrize("opset", OPSETS)
def test_transformed_models_run_on_older_onnxruntime(side, opset, tmp_path):
    rng = np.random.default_rng(opset)
    x = rng.standard_normal((4, 2, 5, 5)).astype(np.float32)
    for preset in preset_names():
        analog = transform_model(conv_mlp(opset, rng), load_preset(preset))
        path = tmp_path / f"{preset}-{opset}.onnx"
        onnx.save(analog, path)
        here = make_session(analog, native=False)
        meta = read_analog_metadata(analog)
        noisy = meta.noise_scale_input in {i.name for i in analog.graph.input}
        for scale in (0.0, 1.0) if noisy else (None,):
            feeds = {"x": x}
            if noisy:
                feeds |= {meta.noise_scale_input: np.array(scale, np.float32), meta.seed_input: np.array(7, np.int64),
                          meta.inputs["chip_seed"]: np.array(7, np.int64)}
            there = run_side(side, path, feeds, tmp_path)[0]
            want = here.run(None, feeds)[0]
            # same graph, same counter-based stream: only libm's log/sin/cos may differ in the last bit
            np.testing.assert_allclose(there, want, rtol=1e-5, atol=1e-5, err_msg=f"{preset} at {scale}")
