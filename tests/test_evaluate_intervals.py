"""Accuracy intervals stay inside [0, 1]; ``repeats`` means one thing in the CLI and the API."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import onnx
import pytest
from helpers import digits_mlp

from analog_onnx.errors import AnalogError
from analog_onnx.evaluate import RunSettings
from analog_onnx.evaluate.metrics import summarize, summarize_accuracy, t_quantile_975


@pytest.mark.parametrize("values", [[0.947, 0.9918], [1.0, 0.99], [0.0, 0.02, 0.01], [1.0, 1.0], [0.3, 0.9],
                                    [0.999, 0.998, 1.0, 1.0, 0.997]])
def test_accuracy_intervals_stay_inside_0_1_and_hold_the_mean(values):
    low, high = summarize_accuracy(values).ci95
    assert 0.0 <= low <= np.mean(values) <= high <= 1.0


def test_accuracy_interval_is_the_t_interval_away_from_the_bounds():
    values = [0.50, 0.52, 0.49, 0.51, 0.50]
    assert summarize_accuracy(values).ci95 == pytest.approx(summarize(values).ci95, abs=1e-3)


def test_accuracy_interval_is_wilson_at_the_effective_samples():
    values = [0.947, 0.9918]
    p, z = np.mean(values), t_quantile_975(1)
    n = p * (1 - p) / (np.std(values, ddof=1) ** 2 / 2)  # the binomial count with the repeats' variance
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert summarize_accuracy(values).ci95 == pytest.approx((center - half, center + half))
    assert summarize(values).ci95[1] > 1  # where the t interval leaves [0, 1]
    assert summarize_accuracy([1.0, 1.0]).ci95 == (1.0, 1.0)  # no spread: a point, as the t interval
    assert summarize_accuracy([0.9]).ci95 is None  # one repeat: no spread to estimate


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "mlp.onnx"
    onnx.save(digits_mlp(), path)
    return path


def test_a_two_chip_run_writes_intervals_inside_0_1(run_cli, model_file, tmp_path):
    code, out, err = run_cli("evaluate", model_file, "--data", "digits", "-p", "aihwkit-pcm",
                             "--noise-scales", "0.5,1,2", "--chips", "2", "--seed", "3", "--out", tmp_path)
    assert code == 0, err
    points = json.loads((tmp_path / "report.json").read_text())["points"]
    t_highs = [p["accuracy_mean"] + t_quantile_975(1) * p["accuracy_std"] / math.sqrt(2) for p in points]
    assert max(t_highs) > 1  # the t interval would leave [0, 1] here
    for point in points:
        assert 0 <= point["accuracy_ci95"][0] <= point["accuracy_mean"] <= point["accuracy_ci95"][1] <= 1
    for row in csv.DictReader((tmp_path / "results.csv").open()):
        assert 0 <= float(row["ci95_low"]) <= float(row["ci95_high"]) <= 1


@pytest.mark.parametrize(("flags", "chips", "reads"), [
    (["--repeats", "4", "--reads", "2"], 2, 2),
    (["--chips", "2", "--reads", "2"], 2, 2),
    (["--repeats", "3"], 3, 1),
])
def test_the_cli_and_run_settings_count_the_same_runs(run_cli, model_file, tmp_path, flags, chips, reads):
    code, _, err = run_cli("evaluate", model_file, "--data", "digits", "--limit", "20", "-p", "aihwkit-pcm",
                           "--noise-scales", "1", "--seed", "0", *flags, "--out", tmp_path)
    assert code == 0, err
    settings = json.loads((tmp_path / "report.json").read_text())["settings"]
    api = RunSettings(repeats=int(flags[1]) * (1 if flags[0] == "--repeats" else reads), reads=reads).checked()
    assert (settings["repeats"], settings["chips"], settings["reads"]) == (api.repeats, api.chips, api.reads)
    assert (settings["chips"], settings["reads"]) == (chips, reads)


def test_settings_problems_name_the_api_argument_in_the_api_and_the_flag_in_the_cli(run_cli, model_file):
    with pytest.raises(AnalogError) as error:
        RunSettings(repeats=5, reads=2).checked()
    assert "--" not in str(error.value) and "repeats 5 is not a whole number of chips of 2 reads" in str(error.value)
    with pytest.raises(AnalogError, match="^batch_size must be >= 1"):
        RunSettings(batch_size=0).checked()
    code, _, err = run_cli("evaluate", model_file, "--data", "digits", "-p", "ideal", "--repeats", "5", "--reads", "2")
    assert code == 2 and "--repeats 5 is not a whole number of chips of 2 --reads" in err
