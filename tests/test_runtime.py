"""Making sessions: the native library when built, the function bodies otherwise (said once), and
clear errors for a library that is required but missing, or present but broken."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from onnx import TensorProto
from onnx import helper as h

from analog_onnx import runtime
from analog_onnx.errors import AnalogError
from analog_onnx.ops import DOMAIN, OPSET_VERSION
from analog_onnx.ops.functions import function_protos
from analog_onnx.ops.native import build


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """A per-user cache with no library in it, and the fallback not yet reported."""
    monkeypatch.setenv("ANALOG_ONNX_CACHE", str(tmp_path))
    monkeypatch.delenv(runtime.REQUIRE_NATIVE_ENV, raising=False)
    monkeypatch.setattr(runtime, "_fallback_reported", False)
    return tmp_path


def noise_model():
    node = h.make_node("Noise", ["X", "noise_scale", "seed"], ["Y"], domain=DOMAIN, sigma_add=0.5)
    graph = h.make_graph([node], "noise", [
        h.make_tensor_value_info("X", TensorProto.FLOAT, [2, 3]),
        h.make_tensor_value_info("noise_scale", TensorProto.FLOAT, []),
        h.make_tensor_value_info("seed", TensorProto.INT64, []),
    ], [h.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 3])])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17), h.make_opsetid(DOMAIN, OPSET_VERSION)],
                        functions=function_protos(17))


FEEDS = {"X": np.zeros((2, 3), np.float32), "noise_scale": np.array(1.0, np.float32), "seed": np.array(0, np.int64)}


def test_missing_library_falls_back_to_function_bodies_and_says_so_once(empty_cache, caplog):
    assert runtime.native_library_path() is None
    with caplog.at_level(logging.WARNING, logger="analog_onnx.runtime"):
        first = runtime.make_session(noise_model()).run(None, FEEDS)[0]
        second = runtime.make_session(noise_model()).run(None, FEEDS)[0]
    np.testing.assert_array_equal(first, second)  # seed 0 reproduces through the function bodies
    warnings = [r for r in caplog.records if "not built" in r.getMessage()]
    assert len(warnings) == 1 and "analog-onnx kernels build" in warnings[0].getMessage()


def test_required_native_library_missing_is_an_error(empty_cache, monkeypatch):
    with pytest.raises(AnalogError, match="run `analog-onnx kernels build`"):
        runtime.make_session(noise_model(), native=True)
    monkeypatch.setenv(runtime.REQUIRE_NATIVE_ENV, "1")  # CI: no silent fallback
    with pytest.raises(AnalogError, match="not built"):
        runtime.make_session(noise_model())


def test_native_false_never_needs_the_library(empty_cache, monkeypatch):
    monkeypatch.setenv(runtime.REQUIRE_NATIVE_ENV, "1")
    assert runtime.make_session(noise_model(), native=False).run(None, FEEDS)[0].shape == (2, 3)


def test_corrupt_library_names_the_rebuild_command(empty_cache):
    path = build.library_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x7fELF but not really a shared library")
    with pytest.raises(AnalogError, match=r"has no readable build record; rebuild it with `analog-onnx kernels build`"):
        runtime.make_session(noise_model())
    status = build.kernel_status()
    assert status.built and status.error


def test_session_threads_are_applied(empty_cache):
    options = runtime.session_options(3, native=False)
    assert options.intra_op_num_threads == 3 and options.inter_op_num_threads == 1
