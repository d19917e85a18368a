"""The ``analog-onnx`` command. Each command group lives in ``analog_onnx/commands/`` and
registers itself here; heavy imports (torch, ray) happen inside the commands that need them."""

from __future__ import annotations

import sys

import typer

from analog_onnx import __version__
from analog_onnx.arguments import flag, spelled_as
from analog_onnx.commands import (
    evaluate_commands,
    kernel_commands,
    model_commands,
    study_commands,
    train_commands,
)
from analog_onnx.errors import AnalogError
from analog_onnx.files import first_line, unwind_on_sigterm
from analog_onnx.text import printable

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: "[default: ...]" in a help text is text, not markup to drop
    help="Make deep networks ready for analog AI hardware: transform, evaluate, train.",
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"analog-onnx {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_show_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Make deep networks ready for analog AI hardware: transform, evaluate, train."""


for module in (model_commands, evaluate_commands, kernel_commands, train_commands, study_commands):
    module.register(app)


def main(args: list[str] | None = None) -> None:
    """Entry point (``args``: the command line, else ``sys.argv``): a user mistake is one line on
    stderr and exit status 2, never a traceback."""
    unwind_on_sigterm()
    try:
        with spelled_as(flag):  # what the commands call names their values by the flags
            # not standalone: the parser's errors come here instead of as its usage block
            status = app(args=args, prog_name="analog-onnx", standalone_mode=False)
    except AnalogError as error:
        _fail(str(error))
    except OSError as error:  # the machine's, not the program's: a full disk, a lost mount, no permission
        _fail((error.strerror or first_line(error)) + (f": {error.filename}" if error.filename else ""))
    except typer.TyperException as error:  # the parser's: an unknown option or command, a bad value, no argument
        if type(error).__name__ == "NoArgsIsHelpError":  # `analog-onnx` alone: the help (typer tells it so too)
            error.show()
            sys.exit(error.exit_code)
        _fail(error.format_message(), error.exit_code)
    if isinstance(status, int) and status:  # typer.Exit(code), Ctrl-C (130)
        sys.exit(status)


def _fail(message: str, status: int = 2) -> None:
    print(f"analog-onnx: error: {printable(message)}", file=sys.stderr)
    sys.exit(status)


if __name__ == "__main__":
    main()
