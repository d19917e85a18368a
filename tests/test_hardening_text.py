"""Names from models, configs and paths are shown as written: never as rich markup, never as
terminal control sequences."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper
from onnx import helper as h

from analog_onnx.text import printable, shown

ESCAPE = "\x1b[31m"
NAMES = {"first": "[/]fc1", "act": "[bold]r", "second": f"fc2{ESCAPE}"}


def hostile_mlp(path: Path) -> Path:
    """A digits classifier (64 -> 16 -> 10) whose node names hold markup and an escape sequence."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.3, name)
               for name, shape in (("w1", (16, 64)), ("w2", (10, 16)))]
    nodes = [h.make_node("Gemm", ["x", "w1"], ["h"], name=NAMES["first"], transB=1),
             h.make_node("Relu", ["h"], ["r"], name=NAMES["act"]),
             h.make_node("Gemm", ["r", "w2"], ["y"], name=NAMES["second"], transB=1)]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10])], weights)
    onnx.save_model(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]), path)
    return path


def test_printable_and_shown():
    assert printable(f"a{ESCAPE}b\n") == "a\\x1b[31mb\\n"
    assert shown("[bold]x[/]") == "\\[bold]x\\[/]"


def test_inspect_shows_names_and_paths_as_written(run_cli, tmp_path):
    model = hostile_mlp(tmp_path / "model[v2].onnx")
    code, out, err = run_cli("inspect", model)
    assert code == 0, err
    assert "model[v2].onnx" in out and "[/]fc1" in out and "[bold]r" not in out  # Relu is no analog layer
    assert "\x1b" not in out and "fc2\\x1b[31m" in out


def test_transform_and_inspect_of_a_transformed_model(run_cli, tmp_path):
    model = hostile_mlp(tmp_path / "model[v2].onnx")
    config = tmp_path / "odd.toml"
    config.write_text('name = "cfg[/]\\u001b[1m"\n[placement]\nwhere = "activations"\n[noise]\nadditive = 0.1\n')
    out_file = tmp_path / f"out{ESCAPE}.onnx"
    code, out, err = run_cli("transform", model, "-c", config, "-o", out_file)
    assert code == 0, err
    assert "\x1b" not in out and "out\\x1b[31m.onnx" in out and "cfg[/]\\x1b[1m" in out
    code, out, err = run_cli("inspect", out_file)
    assert code == 0, err
    assert "\x1b" not in out and "cfg[/]\\x1b[1m" in out


def test_evaluate_and_sensitivity_print_names_as_text_and_write_reports(run_cli, tmp_path):
    model = hostile_mlp(tmp_path / "model[v2].onnx")
    config = tmp_path / "odd.toml"
    config.write_text('name = "cfg[/]"\n[placement]\nwhere = "activations"\n[noise]\nadditive = 0.1\n')
    common = ("-d", "digits", "-c", config, "-r", "1", "--limit", "40", "--seed", "0")
    code, out, err = run_cli("evaluate", model, *common, "-n", "0.5", "-o", tmp_path / "eval")
    assert code == 0, err
    assert "model[v2]" in out and "cfg[/]" in out and (tmp_path / "eval" / "report.json").is_file()
    code, out, err = run_cli("sensitivity", model, *common, "-o", tmp_path / "sens")
    assert code == 0, err
    assert "[/]fc1" in out and "[bold]r" in out and "\x1b" not in out
    assert (tmp_path / "sens" / "sensitivity.json").is_file()


def test_an_error_naming_a_file_shows_control_characters_escaped(run_cli, tmp_path):
    code, _, err = run_cli("inspect", tmp_path / f"missing{ESCAPE}.onnx")
    assert code == 2 and "\x1b" not in err and "missing\\x1b[31m.onnx" in err


def test_version_flag_prints_the_package_version(run_cli):
    from analog_onnx import __version__

    code, out, _ = run_cli("--version")
    assert code == 0 and out.strip() == f"analog-onnx {__version__}"
