"""``python -m analog_onnx.train`` runs ``analog-onnx train`` (the CLI's own error handling); the
entry point for torchrun:

    torchrun --nproc_per_node 2 -m analog_onnx.train --arch resnet20 --data cifar10:DIR ...
"""

from __future__ import annotations

import logging
import os
import sys

from analog_onnx import cli


def main() -> None:
    try:
        cli.main(["train", *sys.argv[1:]])
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
