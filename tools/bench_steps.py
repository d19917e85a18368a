"""Where the analog tile's time goes, step by step, beside the product's floor.

Builds the kernels once more with ``-DANALOG_STEP_CLOCK`` (a library of its own: the build key
holds the flags), whose ``TileBlock`` counts the CPU's time-stamp ticks in each of its steps
(``step_clock.h``), and runs a ResNet-20 through it pass-through and under ``aihwkit-default``.
Prints each step's ms per run and share of the tile, and the product's floor: the network's
multiply-adds at the rate one core sustains at the build's SIMD width (measured by the library),
beside clean onnxruntime's CPU time for the same network. One thread by default, so that the
ticks are the time of one core. (perf's sampling gives next to nothing on some virtual machines;
this works wherever the kernels build.)

    .venv/bin/python tools/bench_steps.py [--batch 256] [--threads 1] [--rounds 5]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import time
from pathlib import Path

import numpy as np
import onnx
from bench_kernels import IMAGE, counted_session, fastest, pass_through, resnet20
from onnx import numpy_helper, shape_inference

from analog_onnx import native_graph
from analog_onnx.config import load_preset
from analog_onnx.ops.native import build
from analog_onnx.transform import transform_model

# TileBlock's steps in step_clock.h's order (enum Step)
STEPS = ("read: slab or rows", "abs-max", "panel pack (with the DAC)", "product (micro-kernel)", "output noise",
         "ADC and sums", "bound management: packs", "epilogue and write")


def step_clock_library() -> Path:
    """The kernels built with the step clock (built now unless the cache has them)."""
    flags = os.environ.get(build.EXTRA_FLAGS_VARIABLE, "")
    os.environ[build.EXTRA_FLAGS_VARIABLE] = f"{flags} -DANALOG_STEP_CLOCK".strip()
    try:
        return build.build_library()[0]
    finally:
        os.environ[build.EXTRA_FLAGS_VARIABLE] = flags


def multiply_adds(model: onnx.ModelProto) -> int:
    """Multiply-adds of one image through the model's Conv, Gemm and MatMul nodes."""
    inferred = shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in (*inferred.graph.value_info, *inferred.graph.output)}
    weights = {w.name: numpy_helper.to_array(w).shape for w in model.graph.initializer}
    total = 0
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul"):
            per_output = int(np.prod(weights[node.input[1]]))
            total += per_output * (int(np.prod(shapes[node.output[0]][2:])) if node.op_type == "Conv" else 1)
    return total


def step_times(library: ctypes.CDLL, session, feeds: dict, rounds: int) -> tuple[list[float], float]:
    """Seconds per step and CPU seconds of the network, from the fastest of ``rounds`` runs."""
    ticks_per_second = library.analog_ticks_per_second()
    session.run(None, feeds)
    best: tuple[list[float], float] = ([], float("inf"))
    for _ in range(rounds):
        for step in range(len(STEPS)):
            library.analog_step_ticks(step, 1)
        start = time.process_time()
        session.run(None, feeds)
        cpu = time.process_time() - start
        if cpu < best[1]:
            best = ([library.analog_step_ticks(step, 0) / ticks_per_second for step in range(len(STEPS))], cpu)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    path = step_clock_library()
    library = ctypes.CDLL(str(path))
    library.analog_step_ticks.restype = ctypes.c_uint64
    library.analog_step_ticks.argtypes = (ctypes.c_size_t, ctypes.c_int)
    library.analog_ticks_per_second.restype = ctypes.c_double
    library.analog_multiply_adds_per_second.restype = ctypes.c_double

    clean = resnet20()
    analog = transform_model(clean, load_preset("aihwkit-default"))
    x = np.random.default_rng(0).random((args.batch, *IMAGE), dtype=np.float32)
    feeds = {clean.graph.input[0].name: x}
    clean_session = counted_session(clean, args.threads, native=False)
    clean_cpu = fastest(lambda: clean_session.run(None, feeds), args.rounds, time.process_time)
    columns = {}
    for label, model in (("pass-through", pass_through(analog)), ("aihwkit-default", analog)):
        session = counted_session(native_graph.prepare(model), args.threads, True, str(path))
        columns[label] = step_times(library, session, {**feeds, "seed": np.array(1, np.int64)}, args.rounds)

    print(f"kernels with the step clock: {path}")
    print(f"ResNet-20, batch {args.batch}, {args.threads} intra-op threads: the tile's steps, ms of CPU per run "
          f"(the fastest of {args.rounds} runs) and share of the tile")
    print(f"  {'step':30s}" + "".join(f" {label:>22s}" for label in columns))
    for step, name in enumerate(STEPS):
        cells = []
        for seconds, _ in columns.values():
            share = seconds[step] / sum(seconds)
            cells.append(f"{seconds[step] * 1e3:15.1f} {share:6.1%}")
        print(f"  {name:30s}" + "".join(f" {cell:>22s}" for cell in cells))
    print(f"  {'the tile, all steps':30s}" + "".join(f" {sum(s) * 1e3:15.1f}       " for s, _ in columns.values()))
    print(f"  {'the network (CPU)':30s}" + "".join(f" {cpu * 1e3:15.1f}       " for _, cpu in columns.values()))
    macs = multiply_adds(clean) * args.batch
    rate = library.analog_multiply_adds_per_second()
    floor = macs / rate
    print(f"the product's floor: {macs / 1e9:.2f} G multiply-adds at {rate / 1e9:.1f} G/s per core = "
          f"{floor * 1e3:.1f} ms of CPU; clean onnxruntime {clean_cpu * 1e3:.1f} ms "
          f"({clean_cpu / floor:.2f}x the floor)")
    products = (f"{label} {seconds[3] / floor:.2f}x" for label, (seconds, _) in columns.items())
    print(f"the tile's product, x the floor: {', '.join(products)}")


if __name__ == "__main__":
    main()
