"""Per-channel normalization from model metadata or flags."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper

from analog_onnx.arguments import spelled_as
from analog_onnx.data.preprocess import PREPROCESS_KEY, Normalization, from_flags, from_model
from analog_onnx.errors import AnalogError
from analog_onnx.evaluate.runner import normalization_flags


def model_with(metadata: dict[str, str]) -> onnx.ModelProto:
    graph = helper.make_graph([], "g", [], [])
    model = helper.make_model(graph)
    helper.set_model_props(model, metadata)
    return model


def test_metadata_normalizes_each_channel_on_axis_1(rng):
    model = model_with({PREPROCESS_KEY: json.dumps({"mean": [0.5, 0.25, 0.0], "std": [0.5, 0.25, 2.0]})})
    norm = from_model(model)
    x = rng.random((2, 3, 4, 4), dtype=np.float32)
    y = norm.apply(x)
    assert norm.source == "model metadata" and y.dtype == np.float32
    np.testing.assert_allclose(y[:, 1], (x[:, 1] - 0.25) / 0.25, rtol=1e-6)
    np.testing.assert_allclose(y[:, 2], x[:, 2] / 2.0, rtol=1e-6)


def test_one_value_broadcasts_and_missing_parts_default(rng):
    x = rng.random((2, 3, 5), dtype=np.float32)
    np.testing.assert_allclose(from_flags([1.0], None).apply(x), x - 1.0, rtol=1e-6)
    np.testing.assert_allclose(from_flags(None, [2.0]).apply(x), x / 2.0, rtol=1e-6)
    assert from_flags(None, None) is None
    assert from_model(model_with({})) is None


def test_bad_normalization_is_one_clear_error(rng):
    with pytest.raises(AnalogError, match="std must be positive"):
        Normalization((0.0,), (0.0,), "flags")
    with pytest.raises(AnalogError, match="has 2 values but the data has 3 channels"):
        from_flags([0.1, 0.2], None).apply(rng.random((1, 3, 2, 2), dtype=np.float32))
    with pytest.raises(AnalogError, match=PREPROCESS_KEY):
        from_model(model_with({PREPROCESS_KEY: "[1, 2]"}))
    with pytest.raises(AnalogError, match="^mean expects comma-separated numbers"):
        normalization_flags("0.1,abc", None)
    with spelled_as(lambda name: f"--{name}"), pytest.raises(AnalogError, match="^--std expects comma-separated"):
        normalization_flags(None, "1,x")


def test_normalization_flags_read_text_and_numbers():
    assert normalization_flags("0.49, 0.48,0.45", None).mean == (0.49, 0.48, 0.45)
    assert normalization_flags(None, [0.5]).std == (0.5,)
    assert normalization_flags(None, None) is None
