"""How ``transform`` and ``strip`` scale with the size of the graph: both should be linear.

A chain of MatMul + Relu layers is transformed with a preset and stripped again, at each size
given (in nodes of the transformed model). Printed per size: the seconds of each step and the
seconds per 1,000 nodes; the last line is the ratio of the per-node times of the largest and the
smallest size (about 1 when linear, about largest/smallest when quadratic). Each size is timed
once: graphs of this size take seconds, and a ratio of per-node times is what the claim is about.

    .venv/bin/python tools/bench_graph_size.py --nodes 4000 20000
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from analog_onnx.config import load_preset
from analog_onnx.transform import strip_model, transform_model


def chain(layers: int) -> onnx.ModelProto:
    """``layers`` x (MatMul with a 4x4 constant weight, Relu)."""
    rng = np.random.default_rng(0)
    nodes, weights, x = [], [], "x"
    for i in range(layers):
        weights.append(numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), f"w{i}"))
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"], name=f"mm{i}"),
                  helper.make_node("Relu", [f"m{i}"], [f"r{i}"], name=f"relu{i}")]
        x = f"r{i}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["n", 4])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[4000, 20000],
                        help="sizes, in nodes of the transformed model")
    parser.add_argument("--preset", default="aihwkit-default")
    args = parser.parse_args()
    config = load_preset(args.preset)
    per_node: dict[int, tuple[float, float]] = {}
    for target in args.nodes:
        probe = len(transform_model(chain(1), config).graph.node)  # nodes per layer after the transform
        model = chain(max(1, target // probe))
        started = time.perf_counter()
        analog = transform_model(model, config)
        transformed = time.perf_counter() - started
        started = time.perf_counter()
        stripped = strip_model(analog)
        strip_seconds = time.perf_counter() - started
        assert len(stripped.graph.node) == len(model.graph.node)
        size = len(analog.graph.node)
        per_node[size] = (transformed / size * 1000, strip_seconds / size * 1000)
        print(f"{size:>7} nodes: transform {transformed:7.2f} s ({per_node[size][0]:.3f} s per 1k nodes), "
              f"strip {strip_seconds:7.2f} s ({per_node[size][1]:.3f} s per 1k nodes)", flush=True)
    small, large = min(per_node), max(per_node)
    if small != large:
        print(f"per-node time, {large} vs {small} nodes (1 = linear, {large / small:.0f} = quadratic): "
              f"transform x{per_node[large][0] / per_node[small][0]:.2f}, "
              f"strip x{per_node[large][1] / per_node[small][1]:.2f}")


if __name__ == "__main__":
    main()
