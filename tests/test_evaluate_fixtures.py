"""The small trained models of tests/helpers.py are what the evaluate tests assume: trained (far
above chance) and equal to their numpy forward pass."""

from __future__ import annotations

import numpy as np
from helpers import digits_mlp, digits_mlp_weights, ort_accuracy

from analog_onnx.data import load_dataset
from analog_onnx.runtime import make_session


def test_digits_mlp_is_trained_and_matches_numpy():
    test = load_dataset("digits")
    x = test.x.reshape(len(test), -1)
    w1, b1, w2, b2 = digits_mlp_weights(32)
    expected = (np.maximum(x @ w1 + b1, 0) @ w2 + b2).argmax(axis=1)
    session = make_session(digits_mlp())
    np.testing.assert_array_equal(session.run(None, {"x": x})[0].argmax(axis=1), expected)
    assert ort_accuracy(digits_mlp(), x, test.y) > 0.8
