"""``python -m analog_onnx.train`` runs the train command; the entry point for torchrun:

    torchrun --nproc_per_node 2 -m analog_onnx.train --arch resnet20 --data cifar10:DIR ...
"""

from __future__ import annotations

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
        sys.exit(2)


if __name__ == "__main__":
    main()
