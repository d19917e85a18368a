"""Models that are not valid ONNX, not float32, or carry damaged metadata are one clear line;
evaluate scores only classifiers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper
from onnx import helper as h

from analog_onnx import native_graph
from analog_onnx.config import load_preset
from analog_onnx.errors import ModelError
from analog_onnx.evaluate import RunSettings, evaluate
from analog_onnx.transform import read_analog_metadata, transform_model

MODEL = Path(__file__).parents[1] / "models" / "digits-mlp-baseline.onnx"


def model(nodes, inputs, outputs, initializers=()) -> onnx.ModelProto:
    graph = h.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])


def tensor(name: str, elem: int, shape: list) -> onnx.ValueInfoProto:
    return h.make_tensor_value_info(name, elem, shape)


def matmul(elem: int = TensorProto.FLOAT, dtype: type = np.float32) -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.ones((64, 10), dtype), "w")
    return model([h.make_node("MatMul", ["x", "w"], ["y"], name="mm")], [tensor("x", elem, ["n", 64])],
                 [tensor("y", elem, ["n", 10])], [weight])


def huge_weight_without_data() -> onnx.ModelProto:
    weight = onnx.TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[100_000, 100_000])  # 37 GiB, no bytes
    io = [tensor(name, TensorProto.FLOAT, ["n", 100_000]) for name in ("x", "y")]
    return model([h.make_node("MatMul", ["x", "w"], ["y"], name="mm")], io[:1], io[1:], [weight])


def cyclic() -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    nodes = [h.make_node("MatMul", ["a", "w"], ["b"], name="mm"), h.make_node("Add", ["x", "b"], ["a"], name="add")]
    return model(nodes, [tensor("x", TensorProto.FLOAT, ["n", 64])], [tensor("b", TensorProto.FLOAT, ["n", 64])],
                 [weight])


def dangling() -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    nodes = [h.make_node("MatMul", ["x", "w"], ["b"], name="mm"), h.make_node("Add", ["nowhere", "b"], ["y"])]
    return model(nodes, [tensor("x", TensorProto.FLOAT, ["n", 64])], [tensor("y", TensorProto.FLOAT, ["n", 64])],
                 [weight])


def with_metadata(key: str, value: str) -> onnx.ModelProto:
    proto = matmul()
    proto.metadata_props.add(key="analog_onnx.config", value="{}")
    entry = next((p for p in proto.metadata_props if p.key == key), None) or proto.metadata_props.add(key=key)
    entry.value = value
    return proto


CASES = {
    "huge weight without data": (huge_weight_without_data, "should contain one and only one value field"),
    "cycle": (cyclic, "topologically sorted"),
    "dangling input": (dangling, "topologically sorted"),
    "float16": (lambda: matmul(TensorProto.FLOAT16, np.float16), "x is float16; analog-onnx transforms float32"),
    "float64": (lambda: matmul(TensorProto.DOUBLE, np.float64), "x is float64"),
    "garbage config metadata": (lambda: with_metadata("analog_onnx.config", "{not json"),
                                "analog_onnx.config is not valid JSON"),
    "garbage sites metadata": (lambda: with_metadata("analog_onnx.sites", "[[["), "analog_onnx.sites is not valid"),
    "sites not names": (lambda: with_metadata("analog_onnx.sites", "[1, 2]"), "must hold names"),
    "config not a config": (lambda: with_metadata("analog_onnx.config", '{"forward": {"out_noise": -1}}'),
                            "is not a valid config"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_models_are_one_line_in_transform_and_inspect(run_cli, tmp_path, case):
    build, message = CASES[case]
    path = tmp_path / "m.onnx"
    onnx.save_model(build(), path)
    for args in (("transform", path, "-o", tmp_path / "out.onnx", "-p", "aihwkit-default"), ("inspect", path)):
        if args[0] == "inspect" and case.startswith("float"):
            continue  # inspecting a float16 model is fine
        code, _, err = run_cli(*args)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (args[0], err)
    assert not (tmp_path / "out.onnx").exists()


def attribute(name: str, value: object) -> Callable[[onnx.NodeProto], None]:
    """An edit that gives a node the attribute ``name`` = ``value``, in place of any it has."""
    def edit(node: onnx.NodeProto) -> None:
        kept = [a for a in node.attribute if a.name != name]
        del node.attribute[:]
        node.attribute.extend([*kept, h.make_attribute(name, value)])
    return edit


def drop(field: str, start: int) -> Callable[[onnx.NodeProto], None]:
    """An edit that removes a node's inputs or outputs from ``start`` on."""
    return lambda node: getattr(node, field).__delitem__(slice(start, None))


# (preset, op, edit of the first node of that op, the error) for transformed models edited by hand
NODE_EDITS = {
    "tile bound a string": ("aihwkit-default", "AnalogTile", attribute("inp_bound", "big"),
                            "attribute inp_bound must be a float, not a string"),
    "tile size a float": ("aihwkit-default", "AnalogTile", attribute("max_input_size", 2.5),
                          "attribute max_input_size must be an integer, not a float"),
    "tile rounds out of range": ("aihwkit-default", "AnalogTile", attribute("bm_rounds", 0),
                                 "attribute bm_rounds must be an integer from 1 to 62, got 0"),
    "tile unknown attribute": ("aihwkit-default", "AnalogTile", attribute("bogus", 1),
                               "attribute bogus is not one of AnalogTile's"),
    "tile without weights": ("aihwkit-default", "AnalogTile", drop("input", 1), "input W is missing"),
    "tile with an input more": ("aihwkit-default", "AnalogTile", lambda node: node.input.append("x"),
                                "has 5 inputs, more than its 4 (X, W, noise_scale, seed)"),
    "device named by a number": ("aihwkit-pcm", "DeviceWeights", attribute("device", 3),
                                 "attribute device must be a string, not an integer"),
    "device without its time": ("aihwkit-pcm", "DeviceWeights", drop("input", 4), "input t_inference is missing"),
    "noise sigma a list": ("hardening-additive", "Noise", attribute("sigma_add", [0.1, 0.2]),
                           "attribute sigma_add must be a float, not a list of floats"),
    "noise without a seed": ("hardening-additive", "Noise", drop("input", 2), "input seed is missing"),
}


@pytest.mark.parametrize("case", NODE_EDITS)
def test_an_edited_analog_node_is_one_line_in_inspect_evaluate_and_sessions(run_cli, tmp_path, case):
    """Each analog node is held to its op's schema before inspect renders it or a native session
    rewrites it: an edited one was a traceback in both (the kernels refused only some edits)."""
    preset, op, edit, message = NODE_EDITS[case]
    analog = transform_model(matmul(), load_preset(preset))
    edit(next(n for n in analog.graph.node if n.op_type == op))
    path = tmp_path / "edited.onnx"
    onnx.save(analog, path)
    for args in (("inspect", path), ("evaluate", path, "--data", "digits", "--limit", "16", "-n", "1", "-r", "1")):
        code, _, err = run_cli(*args)
        assert code == 2 and len(err.strip().splitlines()) == 1, (args[0], err)
        assert f"ai.analog.{op} node " in err and message in err, (args[0], err)
    with pytest.raises(ModelError, match=re.escape(message)):
        native_graph.prepare(path)


def test_metadata_of_our_own_models_still_reads():
    proto = onnx.load(MODEL)
    assert read_analog_metadata(proto) is None
    with pytest.raises(ModelError, match="not valid JSON"):
        read_analog_metadata(with_metadata("analog_onnx.inputs", "{"))


def test_a_sequence_output_is_not_scored_as_classes():
    """[N, 4, 10] per-step scores: evaluate would flatten them into 40 'classes'."""
    weight = numpy_helper.from_array(np.ones((64, 40), np.float32), "w")
    shape = numpy_helper.from_array(np.array([-1, 4, 10], np.int64), "shape")
    nodes = [h.make_node("Flatten", ["x"], ["f"]), h.make_node("MatMul", ["f", "w"], ["s"], name="mm"),
             h.make_node("Reshape", ["s", "shape"], ["y"])]
    proto = model(nodes, [tensor("x", TensorProto.FLOAT, ["n", 1, 8, 8])],
                  [tensor("y", TensorProto.FLOAT, ["n", 4, 10])], [weight, shape])
    with pytest.raises(ModelError, match=r"has shape \[1, 4, 10\]; evaluate needs class scores"):
        evaluate(proto, "digits", config="aihwkit-default", noise_scales=[1.0], limit=20,
                 settings=RunSettings(repeats=1, seed=0))


def test_an_output_whose_rows_do_not_follow_the_batch_is_one_line():
    """Scores [1, 10] whatever the batch: the one-sample probe passes, a batch of 16 cannot be scored."""
    weight = numpy_helper.from_array(np.ones((4, 10), np.float32), "w")
    rows = numpy_helper.from_array(np.array([1, 10], np.int64), "rows")
    nodes = [h.make_node("Shape", ["x"], ["s"]), h.make_node("Cast", ["s"], ["f"], to=TensorProto.FLOAT),
             h.make_node("MatMul", ["f", "w"], ["m"], name="mm"), h.make_node("Expand", ["m", "rows"], ["y"])]
    proto = model(nodes, [tensor("x", TensorProto.FLOAT, ["n", 1, 8, 8])], [tensor("y", TensorProto.FLOAT, ["n", 10])],
                  [weight, rows])
    with pytest.raises(ModelError, match=r"first output y has shape \[1, 10\] for a batch of 16 samples"):
        evaluate(proto, "digits", config="aihwkit-default", noise_scales=[1.0], limit=40,
                 settings=RunSettings(repeats=1, seed=0, batch_size=16))


@pytest.mark.native
def test_a_kernel_refusing_a_node_is_one_line_with_the_file_text_escaped(tmp_path):
    """onnxruntime also logged the refusal it raised, in colour and with the node name raw: two
    lines, one of them carrying a file's text (an escape sequence) to the terminal as it is."""
    from analog_onnx.config import load_preset
    from analog_onnx.transform import transform_model

    analog = transform_model(matmul(), load_preset("aihwkit-default"))
    tile = next(n for n in analog.graph.node if n.op_type == "AnalogTile")
    tile.name = "tile\x1b[31m"
    next(a for a in tile.attribute if a.name == "bm_rounds").i = 70
    onnx.save(analog, tmp_path / "bad.onnx")
    result = subprocess.run([sys.executable, "-m", "analog_onnx.cli", "evaluate", str(tmp_path / "bad.onnx"),
                             "--data", "digits", "--limit", "16"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "bm_rounds must be an integer from 1 to 62, got 70" in result.stderr and "\x1b" not in result.stderr


def external_matmul(folder: Path, entries: dict[str, int], data_bytes: int = 2560) -> Path:
    """``matmul()`` with its weight w [64, 10] float32 in ``d.bin``, the first ``data_bytes`` of it
    written, ``entries`` (offset, length) in the external data record."""
    proto = matmul()
    weight = proto.graph.initializer[0]
    (folder / "d.bin").write_bytes(weight.raw_data[:data_bytes])
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in {"location": "d.bin", **entries}.items():
        weight.external_data.add(key=key, value=str(value))
    onnx.save_model(proto, folder / "m.onnx")
    return folder / "m.onnx"


EXTERNAL_CASES = {
    "file too short": ({}, 100, "d.bin holds 100 bytes from offset 0; its shape [64, 10] of float needs 2560"),
    "offset past the end": ({"offset": 10**9}, 2560, "d.bin holds 0 bytes from offset 1000000000"),
    "negative offset": ({"offset": -5}, 2560, "external data offset -5 is negative"),
    "length too small": ({"length": 7}, 2560, "external data length 7 does not match its shape [64, 10] of float"),
    "length too large": ({"length": 5120}, 5120, "external data length 5120 does not match"),
}


@pytest.mark.parametrize("case", EXTERNAL_CASES)
def test_external_data_that_does_not_fit_its_tensor_is_one_line_everywhere(run_cli, tmp_path, case):
    """onnx_ir raised from deep inside (inspect, transform), a pass failed in numpy (evaluate), or
    transform copied 7 bytes into an output that then could not be loaded."""
    entries, data_bytes, message = EXTERNAL_CASES[case]
    path = external_matmul(tmp_path, entries, data_bytes)
    commands = [("inspect", path), ("transform", path, "-o", tmp_path / "x.onnx", "-p", "aihwkit-default")]
    if case.startswith("length"):
        commands.append(("evaluate", path, "-d", "digits", "-p", "aihwkit-default", "-n", "1", "-r", "1",
                         "--limit", "20"))
    for args in commands:
        code, _, err = run_cli(*args)
        assert code == 2 and f"m.onnx: tensor w: {message}" in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.bin", "m.onnx"]


def test_a_model_file_is_read_and_written_as_protobuf_whatever_its_name(run_cli, tmp_path):
    """onnx guesses a format from the name: a model called m.json was parsed as JSON text."""
    (tmp_path / "m.json").write_bytes(MODEL.read_bytes())
    assert run_cli("inspect", tmp_path / "m.json")[0] == 0
    code, _, err = run_cli("transform", tmp_path / "m.json", "-o", tmp_path / "a.json", "-p", "aihwkit-default")
    assert code == 0, err
    assert len(onnx.load(tmp_path / "a.json", format="protobuf").graph.node) > 0


def test_a_folder_or_a_fifo_given_as_the_model_says_what_it_is(run_cli, tmp_path):
    os.mkfifo(tmp_path / "fifo.onnx")
    (tmp_path / "dir.onnx").mkdir()
    for name, what in (("fifo.onnx", "is a FIFO, not a model file"), ("dir.onnx", "is a folder, not a model file")):
        for args in (("inspect",), ("evaluate", "-d", "digits", "-p", "ideal", "--limit", "20")):
            code, _, err = run_cli(args[0], tmp_path / name, *args[1:])
            assert code == 2 and what in err and len(err.strip().splitlines()) == 1, err
