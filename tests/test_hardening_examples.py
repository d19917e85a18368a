"""The numbers in models/README.md are what its own evaluate command prints for the shipped models."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from analog_onnx.evaluate import RunSettings, evaluate

MODELS = Path(__file__).parents[1] / "models"
ROW = re.compile(r"^\| `(?P<file>[\w.-]+\.onnx)` \| [^|]+ \| (?P<clean>[\d.]+) \| (?P<scale>[\d.]+) \| "
                 r"(?P<mean>[\d.]+) ± (?P<std>[\d.]+) \|", re.MULTILINE)


def readme_rows() -> list[dict[str, str]]:
    return [m.groupdict() for m in ROW.finditer((MODELS / "README.md").read_text())]


def test_the_readme_lists_every_shipped_model():
    assert sorted(r["file"] for r in readme_rows()) == sorted(p.name for p in MODELS.glob("*.onnx"))


@pytest.mark.parametrize("row", readme_rows(), ids=lambda row: row["file"])
def test_readme_numbers_reproduce(row):
    """The command the README states: -p hardening-additive -n SCALE -r 10 --seed 0 (batch 256)."""
    result = evaluate(str(MODELS / row["file"]), "digits", config="hardening-additive",
                      noise_scales=[float(row["scale"])], settings=RunSettings(repeats=10, seed=0)).models[0]
    noisy = result.points[0].accuracy
    assert (f"{result.clean_accuracy:.3f}", f"{noisy.mean:.3f}", f"{noisy.std:.3f}") == \
        (row["clean"], row["mean"], row["std"])
