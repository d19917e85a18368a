"""What ``evaluate`` prints: one table per model with its times as rows, within 80 columns, and
the midpoint only where a sweep can have one."""

from __future__ import annotations

import onnx
import pytest
from helpers import digits_mlp

from analog_onnx.evaluate.levels import time_text


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "mlp.onnx"
    onnx.save(digits_mlp(), path)
    return path


def test_a_drift_run_prints_one_table_within_80_columns(run_cli, model_file, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = run_cli("evaluate", model_file, "--data", "digits", "--limit", "50", "-p", "aihwkit-pcm",
                             "--noise-scales", "1", "--chips", "2", "--reads", "2", "--seed", "0",
                             "--t-inference", "1,3600,86400,31536000", "--drift-compensation", "both")
    assert code == 0, err
    assert out.count("mlp · aihwkit-pcm") == 1  # one table, not one per time
    assert all(len(line) <= 80 for line in out.splitlines())
    for text in ("1 s", "1 h", "1 day", "1 year", "σ chips"):
        assert text in out
    assert "midpoint" not in out  # one noise level: no sweep to find a midpoint in


def test_a_sweep_prints_its_midpoint(run_cli, model_file):
    code, out, _ = run_cli("evaluate", model_file, "--data", "digits", "--limit", "50", "-p", "hardening-additive",
                           "--noise-scales", "0.1,1,10", "--repeats", "2", "--seed", "0")
    assert code == 0 and "midpoint noise" in out


@pytest.mark.parametrize(("seconds", "text"), [(1, "1 s"), (90, "1.5 min"), (3600, "1 h"), (86400, "1 day"),
                                               (2 * 86400, "2 days"), (31_536_000, "1 year"), (0, "0 s")])
def test_times_read_in_their_unit(seconds, text):
    assert time_text(seconds) == text


def test_a_single_level_run_writes_no_noise_plot(run_cli, model_file, tmp_path):
    code, _, err = run_cli("evaluate", model_file, "--data", "digits", "--limit", "50", "-p", "aihwkit-pcm",
                           "--noise-scales", "1", "--chips", "2", "--seed", "0", "--t-inference", "1,86400",
                           "--out", tmp_path)
    assert code == 0, err
    assert {p.name for p in tmp_path.iterdir()} == {"report.json", "results.csv", "accuracy_vs_time.png"}


def test_plot_titles_wrap_instead_of_being_cut():
    from analog_onnx.evaluate.report_files import wrapped_title

    title = wrapped_title("accuracy under noise: cifar10:/a/very/long/path/to/data (10000 test samples), hardware "
                   "aihwkit-pcm+overrides, hardening-additive, reram-wan2022", "5 repeats")
    assert all(len(line) <= 75 for line in title.splitlines()) and title.endswith("5 repeats")
    assert "reram-wan2022" in title
