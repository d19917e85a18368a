"""Run one ONNX model on the onnxruntime of the python that executes this file (a side venv).

Usage: python side_runner.py MODEL.onnx INPUTS.npz OUTPUTS.npz. Uses only onnxruntime and numpy,
so it works in a venv holding nothing else; outputs are saved as out0, out1, ...
"""

import sys

import numpy as np
import onnxruntime as ort


def main(model: str, inputs: str, outputs: str) -> None:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    with np.load(inputs) as data:
        feeds = {name: data[name] for name in data.files}
    results = session.run(None, feeds)
    np.savez(outputs, **{f"out{i}": r for i, r in enumerate(results)})


if __name__ == "__main__":
    main(*sys.argv[1:])
