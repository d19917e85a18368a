"""Writing a study's report: ``study.json``, ``study.csv``, ``summary.md`` and the figures, from the
results (``results.py``: the data and its text) and ``figures.py`` (the drawings)."""

from __future__ import annotations

from pathlib import Path

from analog_onnx.files import write_text
from analog_onnx.study.cells import write_json
from analog_onnx.study.figures import draw_figures
from analog_onnx.study.results import Results, collect, csv_text, summary_markdown
from analog_onnx.study.runner import study_folder
from analog_onnx.study.spec import Spec


def write_report(spec: Spec, root: Path) -> Results:
    """``study.json``, ``study.csv``, ``summary.md`` and ``figures/*.png`` from what is done."""
    root = study_folder(spec, root)
    results = collect(spec, root)
    write_json(root / "study.json", results.to_dict())
    write_text(root / "study.csv", csv_text(results), force=True)
    figures = draw_figures(results, root / "figures")
    write_text(root / "summary.md", summary_markdown(results, [f.relative_to(root) for f in figures]),
               force=True)
    return results
