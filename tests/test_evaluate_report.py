"""Report files: report.json, results.csv and the PNG plots, written atomically and checked."""

from __future__ import annotations

import csv
import json

import pytest
from helpers import digits_mlp
from PIL import Image

from analog_onnx.config import load_preset
from analog_onnx.errors import AnalogError
from analog_onnx.evaluate import RunSettings, evaluate, sensitivity
from analog_onnx.evaluate.report_files import write_report
from analog_onnx.transform import analog_sites

LEVELS = [0.0, 0.3, 1.0]


@pytest.fixture(scope="module")
def report():
    return evaluate([digits_mlp(32), digits_mlp(16)], "digits", config="hardening-additive", noise_scales=LEVELS,
                    settings=RunSettings(repeats=3, seed=0), names=["wide", "narrow"])


def assert_png(path, min_size=(300, 200)):
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] >= min_size[0] and image.size[1] >= min_size[1]


def test_report_files_are_written_and_valid(report, tmp_path):
    written = write_report(report, tmp_path / "out")
    assert sorted(p.name for p in written) == ["accuracy_vs_noise.png", "report.json", "results.csv"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in written)
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["schema_version"] == 1 and data["chance_accuracy"] == 0.1
    for model in data["models"]:
        assert {"name", "clean_accuracy", "midpoint_noise", "midpoint_status", "points", "config"} <= set(model)
        assert [p["noise_scale"] for p in model["points"]] == LEVELS
        for point in model["points"]:
            assert len(point["accuracies"]) == 3
            assert point["accuracy_mean"] == pytest.approx(sum(point["accuracies"]) / 3)
            low, high = point["accuracy_ci95"]
            assert low <= point["accuracy_mean"] <= high
    with (tmp_path / "out" / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["model"], float(r["noise_scale"])) for r in rows] == [(m, s) for m in ("wide", "narrow") for s in LEVELS]
    assert float(rows[1]["accuracy_mean"]) == data["models"][0]["points"][1]["accuracy_mean"]
    assert_png(tmp_path / "out" / "accuracy_vs_noise.png")


def test_output_folder_rules(report, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(AnalogError, match="not empty; pass force=True"):
        write_report(report, out)
    write_report(report, out, force=True)
    assert (out / "keep.txt").read_text() == "mine" and (out / "report.json").is_file()
    (tmp_path / "file").write_text("x")
    with pytest.raises(AnalogError, match="not a directory"):
        write_report(report, tmp_path / "file")


def test_sensitivity_ranks_sites_and_writes_files(tmp_path):
    model = digits_mlp()
    result = sensitivity(model, "digits", config="hardening-additive", noise_scale=0.5,
                         settings=RunSettings(repeats=2, seed=0))
    names = [s.name for s in analog_sites(model, load_preset("hardening-additive"))]
    assert [s.name for s in result.sites] == names
    drops = [s.accuracy_drop for s in result.ranked]
    assert drops == sorted(drops, reverse=True)
    assert result.all_sites.accuracy_drop >= max(drops) - 0.05
    write_report(result, tmp_path / "sens")
    data = json.loads((tmp_path / "sens" / "sensitivity.json").read_text())
    assert data["mode"] == "fixed_noise" and [s["rank"] for s in data["sites"]] == list(range(1, len(names) + 1))
    assert data["sites"][0]["accuracy_drop"] == pytest.approx(drops[0])
    assert_png(tmp_path / "sens" / "sensitivity.png", (300, 100))


def test_sensitivity_midpoint_mode_sweeps_each_site(tmp_path):
    result = sensitivity(digits_mlp(), "digits", config="hardening-additive", midpoint=True,
                         noise_scales="log:1e-2:1e1:7", settings=RunSettings(repeats=1, seed=0))
    assert all(len(s.points) == 7 and s.midpoint is not None for s in result.sites)
    found = [s.midpoint.noise for s in result.ranked if s.midpoint.status == "found"]
    assert found == sorted(found) and found
    write_report(result, tmp_path / "mid")
    data = json.loads((tmp_path / "mid" / "sensitivity.json").read_text())
    assert data["mode"] == "midpoint" and "midpoint_noise" in data["sites"][0]
    assert_png(tmp_path / "mid" / "sensitivity.png", (300, 100))


def test_plot_labels_show_names_from_files_as_plain_text(report, tmp_path):
    """A '$' would start matplotlib mathtext (an unbalanced one fails the whole write) and an ESC
    would be a missing glyph: both come out as written."""
    import dataclasses
    import warnings

    hostile = dataclasses.replace(report, models=[dataclasses.replace(m, name=f"m$\\frac{{\x1b[31m{i}")
                                                  for i, m in enumerate(report.models)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_report(hostile, tmp_path / "out")
    assert_png(tmp_path / "out" / "accuracy_vs_noise.png")


def test_the_noise_axis_mentions_level_0_only_when_the_sweep_has_it(report, monkeypatch):
    import dataclasses
    import io

    from analog_onnx.evaluate import report_files

    figures = []
    monkeypatch.setattr(report_files, "_save", lambda figure, file: figures.append(figure))
    no_zero = dataclasses.replace(report, models=[dataclasses.replace(m, points=[p for p in m.points if p.noise_scale])
                                                  for m in report.models])
    for shown in (report, no_zero):
        report_files.accuracy_vs_noise_png(shown, io.BytesIO())
    with_zero, without_zero = (figure.axes[0].get_xlabel() for figure in figures)
    assert "0 left of the dashed break" in with_zero and "break" not in without_zero
