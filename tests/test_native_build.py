"""Building the native library: pinned headers, the cache path, the CLI's build/status, the step clock."""

from __future__ import annotations

import ctypes
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto
from onnx import helper as h
from typer.testing import CliRunner

from analog_onnx import native_graph
from analog_onnx.cache import cache_dir
from analog_onnx.cli import app
from analog_onnx.config import load_preset
from analog_onnx.errors import AnalogError
from analog_onnx.ops import NATIVE_OPS
from analog_onnx.ops.native import build, headers
from analog_onnx.runtime import make_session, native_required, session_options
from analog_onnx.transform import transform_model

USER_CACHE = cache_dir()  # before any test points the cache elsewhere
MEMBER = "package/Plugins/iOS~/onnxruntime.xcframework/ios-arm64/onnxruntime.framework/Headers/{}"


@pytest.fixture
def empty_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("ANALOG_ONNX_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ORT_INCLUDE_DIR", raising=False)
    return tmp_path / "cache"


def tarball(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_headers_from_the_package_must_match_their_pins(tmp_path):
    names = list(headers.PINNED_SHA256)
    tampered = tarball(tmp_path / "tampered.tgz", {MEMBER.format(name): b"/* changed */" for name in names})
    with pytest.raises(AnalogError, match="does not match its pinned sha256"):
        headers._extract(tampered)
    partial = tarball(tmp_path / "partial.tgz", {MEMBER.format("cpu_provider_factory.h"): b""})
    with pytest.raises(AnalogError, match=f"has no {names[0]}"):
        headers._extract(partial)


def test_include_dir_override(tmp_path, monkeypatch):
    monkeypatch.setenv("ORT_INCLUDE_DIR", str(tmp_path))
    with pytest.raises(AnalogError, match="holds no onnxruntime_c_api.h"):
        headers.include_dir(tmp_path / "cache")
    (tmp_path / "onnxruntime_c_api.h").write_text("#define ORT_API_VERSION 31\n")
    assert headers.include_dir(tmp_path / "cache") == tmp_path
    assert headers.api_version(tmp_path) == 31


def test_library_path_is_keyed_by_onnxruntime_version_and_sources(empty_cache):
    import onnxruntime as ort

    path = build.library_path()
    assert path.is_relative_to(empty_cache)
    assert f"ort-{ort.__version__}-{build.build_key()}" == path.parent.name


def test_extra_compiler_flags_select_their_own_library(empty_cache, monkeypatch):
    """$ANALOG_ONNX_CXXFLAGS (say, -mno-avx512f for the AVX2 path) is passed to the compiler and
    keys the cache, so such a build never replaces the default one."""
    default = build.library_path()
    monkeypatch.setenv(build.EXTRA_FLAGS_VARIABLE, "-mno-avx512f")
    assert build.compiler_flags()[-1] == "-mno-avx512f"
    assert build.library_path() != default
    monkeypatch.delenv(build.EXTRA_FLAGS_VARIABLE)
    assert build.library_path() == default


def test_status_json_before_building(empty_cache):
    result = CliRunner().invoke(app, ["kernels", "status", "--json"])
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert {"built", "library", "ort_api_version", "ops", "onnxruntime"} <= set(status)
    assert status["built"] is False and status["ops"] == []
    assert Path(status["library"]).is_relative_to(empty_cache)


def test_build_without_a_compiler_is_a_clear_error(empty_cache, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-anywhere")
    with pytest.raises(AnalogError, match="needs a C\\+\\+17 compiler"):
        build.build_library()


@pytest.mark.slow
def test_build_into_a_fresh_cache_and_report_it(empty_cache, monkeypatch):
    shared = headers.cached_dir(USER_CACHE)
    if not headers.verified(shared) and not native_required():
        pytest.skip("no cached onnxruntime headers (run `analog-onnx kernels build` once)")
    if headers.verified(shared):
        monkeypatch.setenv("ORT_INCLUDE_DIR", str(shared))
    result = CliRunner().invoke(app, ["kernels", "build"])
    assert result.exit_code == 0, result.output
    status = json.loads(CliRunner().invoke(app, ["kernels", "status", "--json"]).output)
    assert status["built"] is True and status["error"] is None
    assert status["ops"] == list(NATIVE_OPS) and status["ort_api_version"] >= 17
    again = CliRunner().invoke(app, ["kernels", "build"])
    assert "up to date" in again.output


@pytest.mark.slow
@pytest.mark.native
def test_a_step_clock_build_counts_the_tiles_steps_and_computes_the_same_bits(tmp_path, monkeypatch):
    """tools/bench_steps.py's library: built with -DANALOG_STEP_CLOCK (keyed apart from the
    regular build), it gives the regular build's outputs bit for bit and counts ticks in every step
    that an aihwkit-default convolution runs."""
    rng = np.random.default_rng(3)
    graph = h.make_graph([h.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])], "conv",
                         [h.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8, 16, 16])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                         [onnx.numpy_helper.from_array(rng.standard_normal((16, 8, 3, 3)).astype(np.float32), "w")])
    model = transform_model(h.make_model(graph, opset_imports=[h.make_opsetid("", 13)]), load_preset("aihwkit-default"))
    feeds = {"x": rng.standard_normal((4, 8, 16, 16)).astype(np.float32), "seed": np.array(2, np.int64)}
    regular = make_session(model, native=True)
    want = regular.run(None, feeds)[0]

    shared = headers.cached_dir(USER_CACHE)
    if headers.verified(shared):
        monkeypatch.setenv("ORT_INCLUDE_DIR", str(shared))
    monkeypatch.setenv("ANALOG_ONNX_CACHE", str(tmp_path / "cache"))
    flags = os.environ.get(build.EXTRA_FLAGS_VARIABLE, "")  # (an AVX2 build stays one)
    monkeypatch.setenv(build.EXTRA_FLAGS_VARIABLE, f"{flags} -DANALOG_STEP_CLOCK".strip())
    path, built = build.build_library()
    assert built and path.is_relative_to(tmp_path)
    clock = ctypes.CDLL(str(path))
    clock.analog_step_ticks.restype = ctypes.c_uint64
    clock.analog_step_ticks.argtypes = (ctypes.c_size_t, ctypes.c_int)
    clock.analog_ticks_per_second.restype = ctypes.c_double
    clock.analog_multiply_adds_per_second.restype = ctypes.c_double
    options = session_options(1, native=False)
    options.register_custom_ops_library(str(path))
    session = ort.InferenceSession(native_graph.prepare(model).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    for step in range(8):
        clock.analog_step_ticks(step, 1)
    np.testing.assert_array_equal(session.run(None, feeds)[0], want)
    ticks = [clock.analog_step_ticks(step, 0) for step in range(8)]
    # read, abs-max, pack, product, noise, ADC and sums, write ran (reruns may not)
    assert all(ticks[step] > 0 for step in (0, 1, 2, 3, 4, 5, 7)), ticks
    assert clock.analog_ticks_per_second() > 1e8
    assert clock.analog_multiply_adds_per_second() > 1e9
