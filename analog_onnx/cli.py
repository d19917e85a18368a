"""The ``analog-onnx`` command. Each command group lives in ``analog_onnx/commands/`` and
registers itself here; heavy imports (torch, ray) happen inside the commands that need them."""

from __future__ import annotations

import sys

import typer

from analog_onnx.commands import (
    evaluate_commands,
    kernel_commands,
    model_commands,
    study_commands,
    train_commands,
)
from analog_onnx.errors import AnalogError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Make deep networks ready for analog AI hardware: transform, evaluate, train.",
)



@app.callback()
def _root() -> None:
    """Keep ``analog-onnx COMMAND`` a command group even while it has one command."""


for module in (model_commands, evaluate_commands, kernel_commands, train_commands, study_commands):
    module.register(app)


def main() -> None:
    """Entry point: a user mistake is one line on stderr and exit status 2, never a traceback."""
    try:
        app()
    except AnalogError as error:
        print(f"analog-onnx: error: {error}", file=sys.stderr)
        sys.exit(2)
