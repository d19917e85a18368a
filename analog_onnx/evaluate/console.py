"""Rich console output: result tables, and a progress bar while units run."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from analog_onnx.evaluate.backends import Progress as ProgressCallback
from analog_onnx.evaluate.metrics import Midpoint, Summary
from analog_onnx.evaluate.report import EvaluationReport, NoisePoint, SensitivityReport
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
    k = report.settings.get("top_k")
    for model in report.models:
        clean = f"clean {model.clean_accuracy:.4f}"
        title = (f"[bold]{shown(model.name)}[/] · config {shown(model.config['name'])} ({model.config_source}) · "
                 f"{clean} · "
                 f"midpoint noise {_midpoint(model.midpoint)}")
        chips = any(p.chip_spread is not None for p in model.points)
        columns = ["noise", "accuracy ± std", "95% CI", "n"] + ([f"top-{k} ± std"] if k else [])
        columns += ["std between chips", "std within a chip"] if chips else []
        table = Table(*columns, title=title)
        for point in model.points:
            acc = point.accuracy
            row = [f"{point.noise_scale:.4g}", _summary(acc), _ci(acc), str(len(point.accuracies))]
            row += [_summary(point.topk) if point.topk else "-"] if k else []
            spread = point.chip_spread
            row += [f"{spread[0]:.4f}", f"{spread[1]:.4f}"] if spread is not None else []
            table.add_row(*row)
        console.print(table)
    console.print(f"chance accuracy {report.chance_accuracy:.4f} · {report.data['samples']} samples of "
                  f"{shown(report.data['spec'])} ({report.data['split']}) · seed {report.settings['seed']}")
    _print_notes(report.notes, console)
    for model in report.models:
        _print_nonfinite(model.name, model.points, console)


def print_sensitivity(report: SensitivityReport, console: Console) -> None:
    if report.midpoint_mode:
        title = f"[bold]{shown(report.model)}[/] · per-site midpoint"
        table = Table("rank", "site", "op", "midpoint noise", title=title)
        for rank, site in enumerate(report.ranked, 1):
            table.add_row(str(rank), shown(site.name), shown(site.op_type), _midpoint(site.midpoint))
        table.add_row("", report.all_sites.name, "", _midpoint(report.all_sites.midpoint))
    else:
        title = f"[bold]{shown(report.model)}[/] · noise in one site at scale {report.noise_scale:g}"
        table = Table("rank", "site", "op", "accuracy ± std", "drop", title=title)
        for rank, site in enumerate(report.ranked, 1):
            table.add_row(str(rank), shown(site.name), shown(site.op_type), _summary(site.points[0].accuracy),
                          f"{site.accuracy_drop:+.4f}")
        everything = report.all_sites
        table.add_row("", everything.name, "", _summary(everything.points[0].accuracy),
                      f"{everything.accuracy_drop:+.4f}")
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
