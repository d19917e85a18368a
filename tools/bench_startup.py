"""How long the ``analog-onnx`` command takes to start: ``--help``, ``presets`` and ``inspect``,
beside two floors in the same run: a bare Python interpreter and ``import onnx`` (which
``inspect`` needs to read a model). Each command runs ``--runs`` times as a fresh process;
printed are the median wall seconds and the ratio to the bare interpreter. ``--baseline SRC``
also times the commands of another checkout's package (its source folder first on the path),
in the same run, for a before/after ratio.

    .venv/bin/python tools/bench_startup.py --runs 5 [--baseline ../other-checkout]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def small_model(path: Path) -> None:
    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def median_seconds(command: list[str], runs: int, folder: str, source: str | None = None) -> float:
    """Run from ``folder``: ``python -m`` puts the working folder first on the path."""
    env = {**os.environ, "PYTHONPATH": source} if source else None
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                       cwd=folder)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--baseline", help="another checkout whose commands are timed too")
    args = parser.parse_args()
    runs = args.runs
    cli = [sys.executable, "-m", "analog_onnx.cli"]
    with tempfile.TemporaryDirectory() as folder:
        model = Path(folder) / "m.onnx"
        small_model(model)
        cases = {
            "python (floor)": [sys.executable, "-c", "pass"],
            "import onnx (floor of inspect)": [sys.executable, "-c", "import onnx"],
            "analog-onnx --help": [*cli, "--help"],
            "analog-onnx presets": [*cli, "presets"],
            "analog-onnx inspect": [*cli, "inspect", str(model)],
        }
        results = {name: median_seconds(command, runs, folder) for name, command in cases.items()}
        if args.baseline:
            source = str(Path(args.baseline).resolve())
            results |= {f"{name} (baseline)": median_seconds(command, runs, folder, source)
                        for name, command in cases.items() if name.startswith("analog-onnx")}
    floor = results["python (floor)"]
    print(f"{'command':45} {'median s':>9} {'x python':>9}   ({runs} runs each)")
    for name, seconds in results.items():
        mine = results.get(name.removesuffix(" (baseline)"))
        versus = f"   this checkout: {mine / seconds:.2f}x the baseline's time" if name.endswith("(baseline)") else ""
        print(f"{name:45} {seconds:9.3f} {seconds / floor:9.1f}{versus}")


if __name__ == "__main__":
    main()
