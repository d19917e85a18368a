"""``analog-onnx study``: a grid of trainings (data x architectures x methods x seeds), each
trained model evaluated on one or more hardware configs over a noise grid, and the tables and
figures that compare the methods.

    from analog_onnx.study import load_spec, run_study, write_report

    spec = load_spec("studies/paper-digits.toml")
    run_study(spec, "runs/paper-digits", workers=2)      # resumable: done cells are skipped
    results = write_report(spec, Path("runs/paper-digits"))  # study.json, study.csv, summary.md, figures/

Modules: ``spec`` (the TOML grid and cell keys), ``cells`` (running one cell, its record),
``runner`` (scheduling on local workers or Ray, live view), ``results`` (aggregation over seeds,
its text), ``report_files`` (writing the report), ``figures``.
"""

from analog_onnx.study.report_files import write_report
from analog_onnx.study.results import Results, collect
from analog_onnx.study.runner import StudyRun, run_study
from analog_onnx.study.spec import Spec, SpecError, load_spec

__all__ = ["Results", "Spec", "SpecError", "StudyRun", "collect", "load_spec", "run_study", "write_report"]
