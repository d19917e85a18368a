"""The evaluate and sensitivity commands: outputs, and one clear line with exit 2 for mistakes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from helpers import digits_mlp

from analog_onnx.evaluate.models import model_names


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "mlp.onnx"
    onnx.save(digits_mlp(), path)
    return path


def test_evaluate_writes_the_report(run_cli, model_file, tmp_path):
    code, out, err = run_cli("evaluate", model_file, "--data", "digits", "--preset",
                         "hardening-additive", "--noise-scales", "0,0.3,1", "--repeats", "2", "--seed", "0",
                         "--out", tmp_path / "res", "--t-inference", "1,3600")
    assert code == 0, err
    assert "midpoint noise" in out and "nothing depends on time" in " ".join(out.split())
    data = json.loads((tmp_path / "res" / "report.json").read_text())
    assert data["settings"]["seed"] == 0 and len(data["points"]) == 3
    assert {p.name for p in (tmp_path / "res").iterdir()} == {"report.json", "results.csv", "accuracy_vs_noise.png"}


def test_sensitivity_writes_json_and_plot(run_cli, model_file, tmp_path):
    code, out, err = run_cli("sensitivity", model_file, "--data", "digits", "--preset",
                         "hardening-additive", "--noise-scale", "0.3", "--repeats", "1", "--seed", "0",
                         "--out", tmp_path / "sens")
    assert code == 0, err
    assert "fc1" in out and "(all sites)" in out
    assert {p.name for p in (tmp_path / "sens").iterdir()} == {"sensitivity.json", "sensitivity.png"}


@pytest.mark.parametrize("args, message", [
    (["--data", "npz:missing.npz"], "npz: missing.npz is not a file"),
    (["--data", "cifar10"], "needs a path"),
    (["--data", "digits", "--noise-scales", "log:0:1:3"], "positive ends"),
    (["--data", "digits", "--t-inference", "5,1"], "strictly increasing"),
    (["--data", "digits", "--repeats", "0"], "--repeats must be >= 1"),
    (["--data", "digits", "--chips", "2", "--repeats", "3"], "give --repeats or --chips (with --reads), not both"),
    (["--data", "digits", "--chips", "0"], "--chips must be >= 1"),
    (["--data", "digits", "--chips", "2", "--reads", "0"], "--reads must be >= 1"),
    (["--data", "digits", "--drift-compensation", "maybe"], "--drift-compensation must be one of on, off, both"),
    (["--data", "digits", "--preset", "aihwkit-default", "--drift-compensation", "on"], "needs a hardware config "
                                                                                            "with a [device] model"),
    (["--data", "digits", "--set", "out_noise=1"], "--set needs --preset or --config"),
    (["--data", "digits", "--preset", "nope"], "unknown preset 'nope'"),
    (["--data", "digits", "--preset", "ideal", "--mean", "x"], "--mean expects comma-separated numbers"),
    # checked once, by the evaluation itself, which names the values by their flags under the CLI
    (["--data", "digits", "--limit", "0"], "--limit must be >= 1"),
    (["--data", "digits", "--workers", "0"], "--workers must be >= 1"),
    (["--data", "digits", "--t-inference", "0"], "--t-inference: times must be positive"),
    (["--data", "digits", "--batch-size", "0"], "--batch-size must be >= 1"),
])
def test_mistakes_are_one_line_and_exit_2(run_cli, model_file, args, message):
    code, out, err = run_cli("evaluate", model_file, *args)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("analog-onnx: error: ") and message in err


def test_bad_data_file_is_exit_2(run_cli, model_file, tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    code, _, err = run_cli("evaluate", model_file, "--data", f"npz:{tmp_path / 'bad.npz'}",
                       "--preset", "hardening-additive")
    assert code == 2 and "not a readable .npz archive" in err and err.count("\n") == 1


def test_non_empty_out_is_refused_before_any_work(run_cli, model_file, tmp_path):
    (tmp_path / "old.txt").write_text("x")
    code, out, err = run_cli("evaluate", model_file, "--data", "digits", "--preset",
                         "hardening-additive", "--out", tmp_path)
    assert code == 2 and "pass --force" in err and out == ""


def test_the_installed_command_reports_a_shape_mismatch(model_file, tmp_path):
    import numpy as np

    np.savez(tmp_path / "wrong.npz", x=np.zeros((4, 3, 5), np.float32), y=np.array([0, 1, 2, 3]))
    command = [sys.executable, "-c", "from analog_onnx.cli import main; main()", "evaluate", str(model_file),
               "--data", f"npz:{tmp_path / 'wrong.npz'}", "--preset", "hardening-additive"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    # the last line is the error (a line before it may say the native kernels are not built)
    assert done.stderr.strip().splitlines()[-1] == (
        "analog-onnx: error: data npz:wrong.npz gives samples of shape 3x5 (15 values) but mlp input x expects 64")


def test_a_model_given_twice_is_refused(run_cli, model_file):
    """The same file twice scores the same numbers twice (a sweep's draws are common to its models)."""
    again = f"{model_file.parent}/./{model_file.name}"  # spelled otherwise, the same file
    code, out, err = run_cli("evaluate", model_file, again, "--data", "digits")
    assert code == 2 and out == "" and err == f"analog-onnx: error: model {model_file} is given twice\n"


def test_models_of_one_stem_are_named_by_their_folders_then_counted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert model_names(["m.onnx", "sub/m.onnx"]) == [f"{tmp_path.name}/m", "sub/m"]  # not "/m"
    assert model_names(["a/x/m.onnx", "b/x/m.onnx", "c/x/m.onnx"]) == ["x/m", "x/m#2", "x/m#3"]
