"""Rich console output: result tables, and a progress bar while units run."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from analog_onnx.evaluate.backends import Progress as ProgressCallback
from analog_onnx.evaluate.levels import time_text
from analog_onnx.evaluate.metrics import Midpoint, Summary
from analog_onnx.evaluate.report import EvaluationReport, ModelResult, NoisePoint, SensitivityReport
from analog_onnx.text import shown


@contextmanager
def progress_bar(console: Console, description: str) -> Iterator[ProgressCallback]:
    """A progress callback drawing a bar; shown only on a terminal, gone when the run ends."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task(description, total=None)

        def update(finished: int, total: int) -> None:
            bar.update(task, completed=finished, total=total)

        yield update


def _summary(s: Summary) -> str:
    return f"{s.mean:.4f} ± {s.std:.4f}"


def _ci(s: Summary) -> str:
    return f"{s.ci95[0]:.3f}–{s.ci95[1]:.3f}" if s.ci95 else "-"


def _midpoint(m: Midpoint | None) -> str:
    if m is None:
        return "-"
    if m.noise is not None:
        return f"{m.noise:.4g}"
    return {"below_range": "below sweep", "above_range": "above sweep", "undefined": "n/a"}[m.status]


def print_evaluation(report: EvaluationReport, console: Console) -> None:
    """One table per model (its times and compensations are rows), within 80 columns; the
    midpoint only where the sweep has levels to find it between (docs/evaluate.md defines it)."""
    k = report.settings.get("top_k")
    sweep = len({p.noise_scale for m in report.models for p in m.points if p.noise_scale > 0}) > 1
    groups: dict[str, list[ModelResult]] = {}
    for model in report.models:
        groups.setdefault(model.model or model.name, []).append(model)
    for name, models in groups.items():
        first = models[0]
        timed = first.t_inference is not None and len(models) > 1
        title = f"[bold]{shown(name)}[/] · {shown(first.config['name'])} ({first.config_source})"
        title += f" · clean {first.clean_accuracy:.4f}"
        if sweep and not timed:
            title += f" · midpoint noise {_midpoint(first.midpoint)}"
        chips = any(p.chip_spread is not None for m in models for p in m.points)
        columns = (["time", "comp."] if timed else []) + ["noise", "accuracy ± std", "95% CI"]
        columns += ([f"top-{k} ± std"] if k and not (timed and chips) else [])
        columns += ["σ chips", "σ reads"] if chips else []
        table = Table(*columns, title=title, caption=f"{len(first.points[0].accuracies)} runs per row"
                      + (" · σ chips: std between chips' means, σ reads: within a chip" if chips else ""))
        for model in models:
            for point in model.points:
                acc = point.accuracy
                row = [time_text(model.t_inference or 0), _compensation(model.drift_compensation)] if timed else []
                row += [f"{point.noise_scale:.4g}", _summary(acc), _ci(acc)]
                row += [_summary(point.topk) if point.topk else "-"] if k and not (timed and chips) else []
                spread = point.chip_spread
                row += ([f"{spread[0]:.4f}", f"{spread[1]:.4f}"] if spread is not None else ["-", "-"]) if chips else []
                table.add_row(*row)
        console.print(table)
        if sweep and timed:
            console.print("midpoint noise: " + ", ".join(
                f"{time_text(m.t_inference or 0)}{_compensation(m.drift_compensation, ' comp. ')} "
                f"{_midpoint(m.midpoint)}" for m in models))
    console.print(f"chance accuracy {report.chance_accuracy:.4f} · {report.data['samples']} samples of "
                  f"{shown(report.data['spec'])} ({report.data['split']}) · seed {report.settings['seed']}")
    _print_notes(report.notes, console)
    for model in report.models:
        _print_nonfinite(model.name, model.points, console)


def _compensation(on: bool | None, prefix: str = "") -> str:
    return "" if on is None else f"{prefix}{'on' if on else 'off'}"


def print_sensitivity(report: SensitivityReport, console: Console) -> None:
    if report.midpoint_mode:
        title = f"[bold]{shown(report.model)}[/] · per-site midpoint"
        table = Table("rank", "site", "op", "midpoint noise", title=title)
        for rank, site in enumerate(report.ranked, 1):
            table.add_row(str(rank), shown(site.name), shown(site.op_type), _midpoint(site.midpoint))
        table.add_row("", report.all_sites.name, "", _midpoint(report.all_sites.midpoint))
    else:
        title = f"[bold]{shown(report.model)}[/] · noise in one site at scale {report.noise_scale:g}"
        table = Table("rank", "site", "op", "accuracy ± std", "95% CI", "drop", title=title)
        for rank, site in enumerate(report.ranked, 1):
            accuracy = site.points[0].accuracy
            table.add_row(str(rank), shown(site.name), shown(site.op_type), _summary(accuracy), _ci(accuracy),
                          f"{site.accuracy_drop:+.4f}")
        everything = report.all_sites
        table.add_row("", everything.name, "", _summary(everything.points[0].accuracy),
                      _ci(everything.points[0].accuracy), f"{everything.accuracy_drop:+.4f}")
    console.print(table)
    console.print(f"clean accuracy {report.clean_accuracy:.4f} · chance {report.chance_accuracy:.4f} · "
                  f"seed {report.settings['seed']}")
    _print_notes(report.notes, console)
    for site in (*report.ranked, report.all_sites):
        _print_nonfinite(site.name, site.points, console)


def _print_nonfinite(name: str, points: Sequence[NoisePoint], console: Console) -> None:
    """Say where outputs were NaN or infinite: those samples were scored as wrong."""
    bad = [p for p in points if p.nonfinite_outputs]
    if bad:
        where = ", ".join(f"{p.nonfinite_outputs} at noise {p.noise_scale:g}" for p in bad)
        console.print(f"[yellow]note:[/] {shown(name)}: outputs with NaN or infinity (counted as wrong, "
                      f"summed over repeats): {where}")


def _print_notes(notes: tuple[str, ...], console: Console) -> None:
    for note in notes:
        console.print(f"[yellow]note:[/] {shown(note)}")
