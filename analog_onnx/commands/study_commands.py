"""``analog-onnx study``: run a study grid (resumable), or redraw its report from what is done."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.text import Text

from analog_onnx.errors import AnalogError


def study(
    source: Path = typer.Argument(..., help="A study file (TOML), or a study folder (its study.toml is used)."),
    out: Path = typer.Option(None, "--out", "-o", help="Study folder (default: the SOURCE folder, or "
                             "runs/NAME for a study file)."),
    report: bool = typer.Option(False, "--report", help="Only write the report from the cells that are done."),
    workers: int = typer.Option(1, "--workers", "-w", help="Cells run at once (local processes or Ray tasks)."),
    backend: str = typer.Option("local", "--backend", help="local (worker processes) or ray."),
    ray_address: str = typer.Option(None, "--ray-address", help="Join this Ray cluster (default: start a local one)."),
) -> None:
    """Train and evaluate a grid of models (data x archs x methods x seeds x hardware); skips done cells.

    Writes study.json, study.csv, summary.md and figures/ into the study folder.
    """
    from analog_onnx.study import load_spec, run_study, write_report
    from analog_onnx.study.runner import SPEC_COPY

    console = Console(highlight=False)
    if source.is_dir():
        spec_path, out = source / SPEC_COPY, out or source
        if not spec_path.is_file():
            raise AnalogError(f"{source} is not a study folder: it has no {SPEC_COPY}")
    else:
        spec_path = source
    spec = load_spec(spec_path)
    out = out or Path("runs") / spec.name
    if report:
        if not (out / SPEC_COPY).is_file():
            raise AnalogError(f"{out} is not a study folder: it has no {SPEC_COPY}")
    else:
        run = run_study(spec, out, workers=workers, backend=backend, ray_address=ray_address, console=console)
        console.print(Text(f"{run.trained} trained, {run.evaluated} evaluated, {run.skipped} cells already done "
                           f"({run.seconds:.1f} s)"))
        for failure in run.failures:
            console.print(Text(f"failed: {failure}", style="red"))
    results = write_report(spec, out)
    console.print(Text(f"wrote {out / 'study.json'}, study.csv, summary.md and figures/"
                       + (f"; {results.missing} cells not done" if results.missing else "")))
    if not report and run.failures:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command()(study)
