"""The model commands as a user runs them: outputs, one-line errors with exit 2, files left alone."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper
from onnx import helper as h


@pytest.fixture
def model_file(tmp_path: Path, exported_models) -> Path:
    path = tmp_path / "cnn.onnx"
    onnx.save_model(exported_models["cnn"], path)
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_transform_inspect_strip_round_trip(run_cli, model_file, tmp_path):
    code, out, _ = run_cli("transform", model_file, "--preset", "aihwkit-default", "--set", "out_noise=0.04")
    assert code == 0 and "AnalogTile" in out
    analog = tmp_path / "cnn.analog.onnx"
    onnx.checker.check_model(str(analog), full_check=True)
    assert analog.stat().st_mode & 0o044 == model_file.stat().st_mode & 0o044  # not made private

    code, out, _ = run_cli("inspect", analog, "--json")
    info = json.loads(out)
    assert info["transformed"] and info["config"]["forward"]["out_noise"] == 0.04
    assert info["inserted_ops"]["AnalogTile"] == len(info["sites"]) == 3

    code, out, _ = run_cli("inspect", model_file, "--json")
    assert [layer["op_type"] for layer in json.loads(out)["analog_layers"]] == ["Conv", "Conv", "Gemm"]

    code, _, _ = run_cli("strip", analog, "-o", tmp_path / "back.onnx")
    assert code == 0
    back, original = onnx.load(tmp_path / "back.onnx"), onnx.load(model_file)
    assert [n.op_type for n in back.graph.node] == [n.op_type for n in original.graph.node]


def test_presets_lists_and_shows_toml(run_cli):
    code, out, _ = run_cli("presets")
    assert code == 0 and "hardening-additive" in out and "aihwkit-default" in out
    code, out, _ = run_cli("presets", "aihwkit-default")
    assert code == 0 and "out_noise = 0.06" in out and "inp_bits = 7" in out


def test_config_file_and_placement_flags(run_cli, model_file, tmp_path):
    config = tmp_path / "chip.toml"
    config.write_text('name = "chip"\n[placement]\nwhere = "mvm"\n[forward]\nout_noise = 0.1\n')
    out_path = tmp_path / "out.onnx"
    code, out, err = run_cli("transform", model_file, "-o", out_path, "--config", config, "--keep-last-digital")
    assert code == 0, err
    sites = json.loads(run_cli("inspect", out_path, "--json")[1])["sites"]
    assert len(sites) == 2 and not any("Gemm" in s for s in sites)


def test_external_data_models(run_cli, tmp_path, rng):
    weight = rng.standard_normal((64, 32)).astype(np.float32)
    graph = h.make_graph([h.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "big",
                         [h.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 32])],
                         [numpy_helper.from_array(weight, "w")])
    source = tmp_path / "src"
    source.mkdir()
    onnx.save_model(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]), source / "big.onnx",
                    save_as_external_data=True, location="big.weights", size_threshold=0)
    before = digest(source / "big.weights")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, _, err = run_cli("transform", source / "big.onnx", "-o", out_dir / "analog.onnx", "-p", "aihwkit-default")
    assert code == 0, err
    assert (out_dir / "analog.onnx.data").exists() and digest(source / "big.weights") == before
    session = ort.InferenceSession(str(out_dir / "analog.onnx"), providers=["CPUExecutionProvider"])
    x = rng.standard_normal((3, 64)).astype(np.float32)
    y = session.run(None, {"x": x, "noise_scale": np.array(0, np.float32)})[0]  # DAC and ADC only: deterministic
    assert np.abs(y - x @ weight).max() < 0.05 * np.abs(x @ weight).max()


@pytest.mark.parametrize("case", ["missing", "truncated", "not_onnx", "unknown_preset", "unknown_key", "same_as_input",
                                  "exists", "bad_regex", "strip_plain"])
def test_bad_input_is_one_line_exit_2_and_nothing_written(run_cli, case, model_file, tmp_path):
    out_path = tmp_path / "out.onnx"
    args = ["transform", model_file, "-o", out_path]
    if case == "missing":
        args[1] = tmp_path / "nope.onnx"
    elif case == "truncated":
        args[1] = tmp_path / "cut.onnx"
        args[1].write_bytes(model_file.read_bytes()[:200])
    elif case == "not_onnx":
        args[1] = tmp_path / "text.onnx"
        args[1].write_text("hello, I am not a model\n")
    elif case == "unknown_preset":
        args += ["--preset", "aihwkit-defualt"]
    elif case == "unknown_key":
        args += ["--set", "forward.out_nosie=1"]
    elif case == "same_as_input":
        args[3] = model_file
    elif case == "exists":
        out_path.write_text("keep me")
    elif case == "bad_regex":
        args += ["--exclude", "conv("]
    elif case == "strip_plain":
        args = ["strip", model_file, "-o", out_path]
    before = digest(model_file)
    code, _, err = run_cli(*args)
    assert code == 2
    assert err.startswith("analog-onnx: error:") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert digest(model_file) == before
    if case == "exists":
        assert out_path.read_text() == "keep me"
    else:
        assert not out_path.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.onnx")]


def test_model_commands_never_import_torch(tmp_path, exported_models):
    """A deployment machine may lack torch: transform, inspect, strip and evaluate must not need it."""
    path = tmp_path / "m.onnx"
    onnx.save_model(exported_models["mlp"], path)
    script = f"""
import pkgutil, sys, importlib
sys.modules["torch"] = None  # any import of torch now fails
import analog_onnx
for info in pkgutil.walk_packages(analog_onnx.__path__, "analog_onnx."):
    if ".train" in info.name or info.name.endswith("torch_twins") or "train_commands" in info.name:
        continue
    importlib.import_module(info.name)
from analog_onnx.cli import main
for args in (["transform", {str(path)!r}, "-p", "hardening-additive"], ["inspect", {str(path)!r}],
             ["strip", {str(path)!r}.replace(".onnx", ".analog.onnx")]):
    sys.argv = ["analog-onnx", *args]
    try:
        main()
    except SystemExit as e:
        assert not e.code, e.code
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")


@pytest.mark.parametrize("args, message", [
    (["inspect"], "Missing argument 'model'."),
    (["inspect", "--bogus"], "No such option: --bogus"),
    (["bogus"], "No such command 'bogus'."),
    (["kernels", "bogus"], "No such command 'bogus'."),
    (["evaluate", "MODEL", "-d", "digits", "-r", "abc"], "Invalid value for '--repeats' / '-r': "),
    (["sensitivity", "MODEL", "-d", "digits", "--noise-scale", "abc"], "Invalid value for '--noise-scale': "),
    (["inspect", "UNREADABLE"], "Invalid value for 'model': "),
])
def test_the_parsers_mistakes_are_one_line_exit_2(run_cli, model_file, monkeypatch, args, message):
    """Usage, a 'Try --help' line, a blank and the error were four lines, unlike every other mistake."""
    access = os.access
    unreadable = model_file if "UNREADABLE" in args else None
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: path != unreadable and access(path, mode, **kw))
    code, out, err = run_cli(*(model_file if arg in ("MODEL", "UNREADABLE") else arg for arg in args))
    assert code == 2 and out == "", err
    assert err.startswith(f"analog-onnx: error: {message}") and err.count("\n") == 1, err


def test_help_is_still_the_parsers(run_cli):
    code, out, err = run_cli("evaluate", "--help")
    assert code == 0 and err == "" and out.startswith("Usage: analog-onnx evaluate [OPTIONS]")
