"""``python -m analog_onnx.train`` runs the train command; the entry point for torchrun:

    torchrun --nproc_per_node 2 -m analog_onnx.train --arch resnet20 --data cifar10:DIR ...
"""

from __future__ import annotations

import logging
import os
import sys

import typer

from analog_onnx.commands.train_commands import train
from analog_onnx.errors import AnalogError
from analog_onnx.files import unwind_on_sigterm
from analog_onnx.text import printable


def main() -> None:
    unwind_on_sigterm()
    try:
        typer.run(train)
    except AnalogError as error:
        print(f"analog-onnx train: error: {printable(str(error))}", file=sys.stderr)
        leave(2)
    except SystemExit as done:
        leave(done.code if isinstance(done.code, int) else int(done.code is not None))


def leave(code: int) -> None:
    """Exit with ``code``. A torchrun worker skips the interpreter's shutdown: once DDP has run,
    torch keeps the gloo process group alive past ``destroy_process_group``, and destroying its
    threads during shutdown aborts the worker (SIGABRT) in about one run in ten on a busy machine,
    after everything was written. Our files are closed by then; streams and logs are flushed here."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        sys.exit(code)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
