"""``analog-onnx kernels``: build the native onnxruntime kernels and report on them."""

from __future__ import annotations

import json

import typer

from analog_onnx.text import printable

kernels = typer.Typer(no_args_is_help=True, help="Native onnxruntime kernels of the analog ops (C++).")


@kernels.command()
def build(force: bool = typer.Option(False, "--force", help="Rebuild even when an up-to-date library exists.")
          ) -> None:
    """Compile the kernel library for this onnxruntime into the per-user cache."""
    from analog_onnx.ops.native.build import build_library

    typer.echo("checking the native analog kernels (compiling them takes a minute) ...", err=True)
    path, fresh = build_library(force=force)
    typer.echo(printable(f"{'built' if fresh else 'up to date'}: {path}"))


@kernels.command()
def status(as_json: bool = typer.Option(False, "--json", help="Print a JSON object.")) -> None:
    """Whether the library is built for this onnxruntime, where, and which ops it provides."""
    from analog_onnx.ops.native.build import kernel_status

    report = kernel_status()
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    state = "built" if report.built and not report.error else "broken" if report.built else "not built"
    typer.echo(f"native kernels: {state}")
    typer.echo(f"library:        {printable(report.library)}")
    typer.echo(f"onnxruntime:    {report.onnxruntime}")
    if report.built and not report.error:
        typer.echo(f"C API version:  {report.ort_api_version}")
        typer.echo(f"ops:            {report.domain} v{report.opset}: {', '.join(report.ops)}")
    if report.error:
        hint = "" if "kernels build" in report.error else " (fix: analog-onnx kernels build --force)"
        typer.echo(f"error:          {printable(report.error)}{hint}")
    if not report.built:
        typer.echo("build it with:  analog-onnx kernels build")


def register(app: typer.Typer) -> None:
    app.add_typer(kernels, name="kernels")
