"""Models below opset 13 are upgraded by the transform itself (onnx.version_converter), and the
onnx package's own backend-test models go through it."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper
from onnx import helper as h

from analog_onnx.config import load_preset
from analog_onnx.errors import ModelError
from analog_onnx.runtime import make_session
from analog_onnx.transform import MIN_OPSET, read_analog_metadata, transform_model

BACKEND_DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"
NOISY = ("hardening-additive", "aihwkit-default")
CLI = "from analog_onnx.cli import main; main()"  # the analog-onnx command, in a fresh process


def opset9_cnn(rng: np.random.Generator) -> onnx.ModelProto:
    """Conv, BatchNormalization, Relu, MaxPool, Reshape, Gemm at opset 9 and IR 3 (initializers are
    graph inputs), as the oldest exporters wrote them."""
    tensors = {"cw": rng.standard_normal((4, 1, 3, 3)), "cb": rng.standard_normal(4),
               "scale": rng.uniform(0.5, 1.5, 4), "bias": rng.standard_normal(4), "mean": rng.standard_normal(4),
               "var": rng.uniform(0.5, 1.5, 4), "gw": rng.standard_normal((3, 36)), "gb": rng.standard_normal(3)}
    initializers = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in tensors.items()]
    initializers.append(numpy_helper.from_array(np.array([-1, 36], np.int64), "shape"))
    nodes = [h.make_node("Conv", ["x", "cw", "cb"], ["c"], pads=[1, 1, 1, 1]),
             h.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["b"]),
             h.make_node("Relu", ["b"], ["r"]),
             h.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             h.make_node("Reshape", ["p", "shape"], ["f"]),
             h.make_node("Gemm", ["f", "gw", "gb"], ["y"], transB=1)]
    inputs = [h.make_tensor_value_info("x", TensorProto.FLOAT, [2, 1, 6, 6])]
    inputs += [h.make_tensor_value_info(t.name, t.data_type, t.dims) for t in initializers]
    graph = h.make_graph(nodes, "cnn9", inputs, [h.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
                         initializers)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 9)], ir_version=3)


def plain_outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs without graph optimizations, so that only the model decides the numbers."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def noisy_outputs(analog: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    meta = read_analog_metadata(analog)
    controls = {meta.noise_scale_input: np.array(1.0, np.float32), meta.seed_input: np.array(5, np.int64)}
    return make_session(analog).run(None, feeds | controls)


def test_old_opset_is_upgraded_and_the_given_model_kept(rng, caplog):
    old = opset9_cnn(rng)
    before = old.SerializeToString()
    x = {"x": rng.standard_normal((2, 1, 6, 6)).astype(np.float32)}
    with caplog.at_level(logging.WARNING, logger="analog_onnx.transform"):
        ideal = transform_model(old, load_preset("ideal"))
    assert [r.getMessage() for r in caplog.records] == [
        f"model uses opset 9: upgraded to opset {MIN_OPSET} with onnx.version_converter (the input is unchanged)"]
    assert old.SerializeToString() == before
    assert {o.domain: o.version for o in ideal.opset_import}[""] == MIN_OPSET
    for got, want in zip(plain_outputs(ideal, x), plain_outputs(old, x), strict=True):
        np.testing.assert_array_equal(got, want)
    noisy = transform_model(old, load_preset("hardening-additive"))
    (y,) = noisy_outputs(noisy, x)
    assert y.shape == (2, 3) and not np.array_equal(y, plain_outputs(old, x)[0])


def test_converter_failure_is_one_model_error():
    graph = h.make_graph([h.make_node("NoSuchOp", ["x"], ["y"])], "bad",
                         [h.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    old = h.make_model(graph, opset_imports=[h.make_opsetid("", 9)], ir_version=4)
    with pytest.raises(ModelError, match=r"opset 9 and onnx.version_converter cannot upgrade it to 13 \(.+\)"):
        transform_model(old, load_preset("hardening-additive"))


def test_cli_says_so_in_one_line(rng, tmp_path):
    source, output = tmp_path / "old.onnx", tmp_path / "old.analog.onnx"
    onnx.save(opset9_cnn(rng), source)
    for args in (["transform", str(source), "-p", "hardening-additive", "-o", str(output)], ["inspect", str(source)]):
        done = subprocess.run([sys.executable, "-c", CLI, *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "upgraded to opset 13" in lines[0], (args[0], done.stderr)
    assert "Gemm" in done.stdout  # inspect lists the layers of the upgraded model
    assert onnx.load(source).opset_import[0].version == 9
    assert {o.domain: o.version for o in onnx.load(output).opset_import}[""] == MIN_OPSET


def backend_models() -> list[Path]:
    """The runnable backend-test models below opset 13: the model sets with test data, and the
    light versions of the classic zoo networks."""
    paths = sorted(BACKEND_DATA.glob("*/*/model.onnx")) + sorted(BACKEND_DATA.glob("light/*.onnx"))
    return [p for p in paths if {o.domain: o.version for o in onnx.load(p, load_external_data=False).opset_import}
            .get("", MIN_OPSET) < MIN_OPSET]


def backend_inputs(path: Path, model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The model's recorded test inputs, or seeded random ones (the light models have none)."""
    constant = {t.name for t in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in constant]
    recorded = sorted((path.parent / "test_data_set_0").glob("input_*.pb"))
    if recorded:
        return {n: numpy_helper.to_array(onnx.load_tensor(str(f))) for n, f in zip(names, recorded, strict=False)}
    rng = np.random.default_rng(0)
    shapes = {i.name: [d.dim_value or 1 for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    return {n: rng.standard_normal(shapes[n]).astype(np.float32) for n in names}


@pytest.mark.slow
def test_backend_models_transform():
    """Every backend model that onnxruntime runs: ideal gives identical outputs; every fifth of
    them and the zoo networks also load and run with each noisy preset."""
    checked, failures = 0, []
    for index, path in enumerate(backend_models()):
        model = onnx.load(path)
        feeds = backend_inputs(path, model)
        try:
            want = plain_outputs(model, feeds)
        except Exception:  # onnxruntime itself refuses it (string ops without a locale, opset 1 Upsample)
            continue
        checked += 1
        name = str(path.relative_to(BACKEND_DATA))
        try:
            ideal = plain_outputs(transform_model(model, load_preset("ideal")), feeds)
            if not all(np.array_equal(g, w, equal_nan=g.dtype.kind == "f") for g, w in zip(ideal, want, strict=True)):
                failures.append(f"{name}: ideal outputs differ")
            if index % 5 == 0 or path.parent.name == "light":
                for preset in NOISY:
                    got = noisy_outputs(transform_model(model, load_preset(preset)), feeds)
                    if [g.shape for g in got] != [w.shape for w in want]:
                        failures.append(f"{name}: {preset} output shapes differ")
        except Exception as error:
            failures.append(f"{name}: {type(error).__name__}: {error}")
    assert not failures, "\n".join(failures)
    assert checked >= 100  # 109 with onnx 1.16-1.23
