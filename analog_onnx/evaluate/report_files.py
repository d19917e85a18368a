"""Report files and plots: the one module that turns report data into files.

``write_report`` writes an evaluation's ``report.json``, ``results.csv`` and
``accuracy_vs_noise.png`` (and ``accuracy_vs_time.png`` over several times), or a sensitivity
run's ``sensitivity.json`` and ``sensitivity.png``. They go through ``analog_onnx.files``
together, so a crash never leaves a half-written file or a report of two runs.
Plots are drawn with matplotlib's Agg canvas directly
(no pyplot, no global backend state).
"""

from __future__ import annotations

import csv
import io
import json
import textwrap
from collections.abc import Callable, Collection, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any, BinaryIO

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from analog_onnx.arguments import expect, spelled
from analog_onnx.errors import AnalogError
from analog_onnx.evaluate.metrics import Summary
from analog_onnx.evaluate.report import EvaluationReport, SensitivityReport
from analog_onnx.files import atomic_outputs, check_output
from analog_onnx.text import printable

EVALUATION_FILES = ("report.json", "results.csv", "accuracy_vs_noise.png", "accuracy_vs_time.png")
SENSITIVITY_FILES = ("sensitivity.json", "sensitivity.png")


def write_report(report: EvaluationReport | SensitivityReport, out: str | Path, *, force: bool = False,
                 inputs: Collection[str | Path] = ()) -> list[Path]:
    """Write the report's files into the folder ``out`` together (all or none); returns their paths.

    A file of the same kind of report that this one does not write (``accuracy_vs_time.png`` of an
    earlier run with several times) is removed, so the folder never mixes two runs; files of the
    other kind, and anything else, are left alone. A folder this call created is removed again when
    writing fails. Nothing is written or removed when any file of the kind is one of ``inputs``
    (the files the run read)."""
    expect(report, (EvaluationReport, SensitivityReport), "report")
    expect(out, (str, Path), "out")
    folder = Path(out).expanduser()
    created = not folder.exists()
    kind = SENSITIVITY_FILES if isinstance(report, SensitivityReport) else EVALUATION_FILES
    folder = prepare_output_dir(out, force=force, inputs=inputs, names=kind)
    files = _report_files(report)
    try:
        with atomic_outputs(*(folder / name for name in files), force=True, inputs=inputs) as scratch:
            for path, write in zip(scratch, files.values(), strict=True):
                with open(path, "wb") as handle:
                    write(handle)
    except BaseException:
        if created:
            with suppress(OSError):
                folder.rmdir()  # empty again: the scratch files went with their staging folder
        raise
    for name in kind:
        if name not in files:
            (folder / name).unlink(missing_ok=True)
    return [folder / name for name in files]


def _report_files(report: EvaluationReport | SensitivityReport) -> dict[str, Callable[[BinaryIO], Any]]:
    """{file name: a function writing it to a binary file}."""
    def text(content: str) -> Callable[[BinaryIO], Any]:
        return lambda handle: handle.write(content.encode())

    if isinstance(report, SensitivityReport):
        return {"sensitivity.json": text(dumps_json(report.to_dict())),
                "sensitivity.png": lambda f: sensitivity_png(report, f)}
    files = {"report.json": text(dumps_json(report.to_dict())), "results.csv": text(results_csv(report))}
    if len({p.noise_scale for m in report.models for p in m.points}) > 1:  # one level is no curve
        files["accuracy_vs_noise.png"] = lambda f: accuracy_vs_noise_png(report, f)
    if len({m.t_inference for m in report.models if m.t_inference is not None}) > 1:
        files["accuracy_vs_time.png"] = lambda f: accuracy_vs_time_png(report, f)
    return files


def results_csv(report: EvaluationReport) -> str:
    """``results.csv``: one row per model and noise level."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model", "noise_scale", "repeats", "accuracy_mean", "accuracy_std", "ci95_low",
                     "ci95_high", "topk_accuracy_mean", "topk_accuracy_std", "clean_accuracy", "t_inference",
                     "drift_compensation"])
    for model in report.models:
        compensation = "" if model.drift_compensation is None else str(model.drift_compensation).lower()
        for point in model.points:
            acc, topk = point.accuracy, point.topk
            low, high = acc.ci95 or ("", "")
            writer.writerow([model.name, point.noise_scale, len(point.accuracies), acc.mean, acc.std, low, high,
                             topk.mean if topk else "", topk.std if topk else "", model.clean_accuracy,
                             "" if point.t_inference is None else point.t_inference, compensation])
    return buffer.getvalue()


def dumps_json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, allow_nan=False) + "\n"


def check_output_dir(out: str | Path, *, force: bool, inputs: Collection[str | Path] = (),
                     names: Collection[str] = ()) -> Path:
    """Fail early (before any work) when ``out`` cannot take our files ``names``: each must be free
    to replace (:func:`~analog_onnx.files.check_output`), and none of them one of ``inputs``."""
    folder = Path(out).expanduser()
    if folder.exists() and not folder.is_dir():
        raise AnalogError(f"{spelled('out')} {out} exists and is not a directory")
    if folder.is_dir() and any(folder.iterdir()) and not force:
        force = spelled("force") if spelled("force") != "force" else "force=True"  # the flag, or the keyword
        raise AnalogError(f"{spelled('out')} {out} exists and is not empty; pass {force} to write into it")
    if folder.is_dir():
        for name in names:
            check_output(folder / name, force=True, inputs=inputs)
    return folder


def prepare_output_dir(out: str | Path, *, force: bool, inputs: Collection[str | Path] = (),
                       names: Collection[str] = ()) -> Path:
    folder = check_output_dir(out, force=force, inputs=inputs, names=names)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AnalogError(f"cannot create {spelled('out')} {out}: {e.strerror}") from None
    return folder


# -- plots --------------------------------------------------------------------------------------
def _label(text: str) -> str:
    """Text from a file as plain plot text: control characters escaped, ``$`` not mathtext."""
    return printable(text).replace("$", r"\$")


def _save(figure: Figure, file: BinaryIO) -> None:
    FigureCanvasAgg(figure)
    figure.savefig(file, format="png", dpi=120)


def accuracy_vs_noise_png(report: EvaluationReport, file: BinaryIO) -> None:
    """Mean accuracy against noise scale (log x; level 0 as a marker left of a break), its 95%
    interval as a band where there are repeats, one curve per model, labelled midpoint lines, the
    clean accuracies and chance; the title names the data and the hardware config."""
    figure = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = figure.add_subplot()
    positive = sorted({p.noise_scale for m in report.models for p in m.points if p.noise_scale > 0})
    zero_at = zero_position(positive)
    for model in report.models:
        points = sorted(model.points, key=lambda p: p.noise_scale)
        curve = [p for p in points if p.noise_scale > 0]
        label = f"{_label(model.name)} (clean {model.clean_accuracy:.3f})"
        (line,) = ax.plot([p.noise_scale for p in curve], [p.accuracy.mean for p in curve], marker="o",
                          markersize=3, label=label)
        _band(ax, [p.noise_scale for p in curve], [p.accuracy for p in curve], line.get_color())
        zero = next((p for p in points if p.noise_scale == 0), None)
        if zero is not None:
            ax.errorbar([zero_at], [zero.accuracy.mean], yerr=_error_bar(zero.accuracy), marker="s", markersize=4,
                        color=line.get_color(), capsize=2)
        if model.midpoint.noise is not None:
            ax.axvline(model.midpoint.noise, color=line.get_color(), linestyle=":", linewidth=1)
            ax.annotate(f"midpoint {model.midpoint.noise:.3g}", (model.midpoint.noise, 0.98), rotation=90,
                        xycoords=("data", "axes fraction"), ha="right", va="top", fontsize="x-small",
                        color=line.get_color())
    _chance_and_grid(ax, report)
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    has_zero = any(p.noise_scale == 0 for m in report.models for p in m.points) and bool(positive)
    if has_zero:
        zero_level_axis(ax, positive)
    ax.set_xlabel("noise scale (multiplies every sigma" + ("; 0 left of the dashed break)" if has_zero else ")"))
    ax.set_title(wrapped_title(f"accuracy under noise: {_data_text(report)}, hardware {_configs(report)}",
                        f"{_runs_text(report)}; band: 95% interval of the mean"), fontsize="medium")
    ax.legend(fontsize="small")
    _save(figure, file)


def accuracy_vs_time_png(report: EvaluationReport, file: BinaryIO) -> None:
    """Mean accuracy against time since programming (log x, ticks in s/h/day/year) at the nominal
    noise level (1, or the sweep's largest below it), the 95% interval as a band, one line per
    model and compensation, its clean accuracy; y spans the data, not 0 to 1."""
    figure = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = figure.add_subplot()
    series: dict[tuple[str, bool | None], list] = {}
    for model in report.models:
        if model.t_inference is not None:
            series.setdefault((model.model or model.name, model.drift_compensation), []).append(model)
    levels = sorted({p.noise_scale for m in report.models for p in m.points})
    level = max([v for v in levels if v <= 1.0] or levels[:1])
    values: list[float] = []
    cleans: dict[str, float] = {}
    for (name, compensated), models in series.items():
        models = sorted(models, key=lambda m: m.t_inference)
        points = [next(p for p in m.points if p.noise_scale == level) for m in models]
        times = [m.t_inference for m in models]
        label = _label(name) + ("" if compensated is None else f", compensation {'on' if compensated else 'off'}")
        (line,) = ax.plot(times, [p.accuracy.mean for p in points], marker="o", markersize=3, label=label,
                          linestyle="-" if compensated in (None, True) else "--")
        _band(ax, times, [p.accuracy for p in points], line.get_color())
        values += [v for p in points for v in (p.accuracy.ci95 or (p.accuracy.mean,) * 2)]
        cleans[name] = models[0].clean_accuracy
    for name, clean in cleans.items():
        ax.axhline(clean, color="black", linewidth=0.8, linestyle="-.")
        ax.annotate(f"clean {_label(name)} {clean:.3f}", (0.01, clean), xycoords=("axes fraction", "data"),
                    va="bottom", fontsize="x-small")
    values += list(cleans.values())
    low, high = min(values), max(values)
    margin = max(high - low, 0.01) * 0.15
    ax.set_ylim(max(low - margin, 0.0), min(high + margin, 1.0))
    if low - margin <= report.chance_accuracy:
        ax.axhline(report.chance_accuracy, color="gray", linestyle="--", linewidth=1, label="chance")
    ax.set_xscale("log")
    ticks = [t for t in TIME_TICKS if min(m.t_inference for m in report.models if m.t_inference is not None) / 1.5
             <= t <= max(m.t_inference or 0 for m in report.models) * 1.5]
    ax.set_xticks(ticks, [TIME_TICKS[t] for t in ticks])
    ax.minorticks_off()
    ax.grid(True, alpha=0.3)
    ax.set_xlabel("time since programming (t_inference)")
    ax.set_ylabel("top-1 accuracy")
    ax.set_title(wrapped_title(f"accuracy over time: {_data_text(report)}, hardware {_configs(report)}",
                        f"noise scale {level:g}, {_runs_text(report)}; band: 95% interval of the mean"),
                 fontsize="medium")
    ax.legend(fontsize="small")
    _save(figure, file)


def zero_position(positive: Sequence[float]) -> float:
    """Where noise level 0 is drawn on a log axis: left of a break before the smallest positive level."""
    return min(positive) / 4 if positive else 1.0


def zero_level_axis(ax: Any, positive: Sequence[float]) -> None:
    """A log noise axis that shows level 0: its tick "0" left of a dashed break."""
    zero_at = zero_position(positive)
    ax.set_xlim(zero_at / 1.6, max(positive) * 1.3)
    ax.axvline(zero_at * 1.6, color="black", linewidth=0.8, linestyle=(0, (2, 2)))
    ticks = [t for t in ax.get_xticks() if min(positive) / 1.01 <= t <= max(positive) * 1.3]
    ax.set_xticks([zero_at, *ticks], ["0", *(f"{t:g}" for t in ticks)])
    ax.minorticks_off()


TIME_TICKS = {1: "1 s", 60: "1 min", 3_600: "1 h", 86_400: "1 day", 2_592_000: "1 month", 31_536_000: "1 year",
              315_360_000: "10 years"}


def _band(ax: Any, xs: Sequence[float], summaries: Sequence[Summary], color: str) -> None:
    """The 95% intervals as a band, where there are repeats to make one."""
    if xs and all(s.ci95 is not None for s in summaries):
        ax.fill_between(xs, [s.ci95[0] for s in summaries], [s.ci95[1] for s in summaries],  # type: ignore[index]
                        color=color, alpha=0.2, linewidth=0)


def _error_bar(summary: Summary) -> Any:
    if summary.ci95 is None:
        return None
    return [[summary.mean - summary.ci95[0]], [summary.ci95[1] - summary.mean]]


def _chance_and_grid(ax: Any, report: EvaluationReport) -> None:
    ax.axhline(report.chance_accuracy, color="gray", linestyle="--", linewidth=1, label="chance")
    ax.set_ylabel("top-1 accuracy")
    ax.grid(True, which="both", alpha=0.3)


def _data_text(report: EvaluationReport) -> str:
    data = report.data
    return f"{data.get('spec', 'data')} ({data.get('samples', '?')} {data.get('split', '')} samples)"


def _configs(report: EvaluationReport) -> str:
    return ", ".join(dict.fromkeys(str(m.config.get("name", "?")) for m in report.models))


def _runs_text(report: EvaluationReport) -> str:
    settings = report.settings
    if settings.get("reads", 1) > 1:
        return f"{settings.get('chips')} chips x {settings.get('reads')} reads"
    return f"{settings.get('repeats')} repeats"


def wrapped_title(*parts: str, width: int = 75) -> str:
    """Plot text from files, wrapped to lines that fit a 7.5-inch figure (no title is cut)."""
    return "\n".join(line for part in parts for line in textwrap.wrap(_label(part), width, break_on_hyphens=False))


def sensitivity_png(report: SensitivityReport, file: BinaryIO) -> None:
    """One row per site, most fragile on top: bars of accuracy drop at one noise level, or with
    --midpoint dots at each site's midpoint noise scale (log axis; sites outside the sweep are labelled)."""
    sites = report.ranked
    figure = Figure(figsize=(7, 1.5 + 0.3 * len(sites)), layout="constrained")
    ax = figure.add_subplot()
    rows = range(len(sites))
    if report.midpoint_mode:
        for row, site in zip(rows, sites, strict=True):
            if site.midpoint.noise is not None:
                ax.plot(site.midpoint.noise, row, "o", color="tab:red")
            else:
                ax.annotate(site.midpoint.status.replace("_", " "), (0.01, row), xycoords=("axes fraction", "data"),
                            va="center", fontsize="small", color="gray")
        reference = report.all_sites.midpoint.noise
        ax.set_xscale("log")
        ax.set_xlim(min(report.settings["noise_scales"]), max(report.settings["noise_scales"]))
        ax.set_xlabel("midpoint noise scale (lower = more fragile)")
    else:
        summaries = [s.points[0].accuracy for s in sites]  # the drop's interval is the accuracy's, mirrored
        errors = None if any(a.ci95 is None for a in summaries) else [
            [a.ci95[1] - a.mean for a in summaries], [a.mean - a.ci95[0] for a in summaries]]  # type: ignore[index]
        ax.barh(rows, [s.accuracy_drop for s in sites], xerr=errors, capsize=2, color="tab:red",
                error_kw={"elinewidth": 0.8})
        reference = report.all_sites.accuracy_drop
        ax.set_xlabel(f"accuracy drop at noise scale {report.noise_scale:g} (higher = more fragile)"
                      + ("; bars: 95% interval" if errors else ""))
    if reference is not None:
        ax.axvline(reference, color="gray", linestyle="--", linewidth=1, label="all sites")
        ax.legend(fontsize="small")
    ax.set_yticks(rows, [_label(f"{s.name} ({s.op_type})") for s in sites], fontsize="small")
    ax.set_ylim(len(sites) - 0.5, -0.5)
    ax.grid(True, axis="x", alpha=0.3)
    hardware = report.config.get("name", "?")
    ax.set_title(wrapped_title(f"per-site noise sensitivity of {report.model}, hardware {hardware}"), fontsize="medium")
    _save(figure, file)
