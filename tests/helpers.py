"""Helpers the tests share: exporting torch modules and building small ONNX models by hand.

Test files import from here, never from each other or from conftest.
"""

from __future__ import annotations

import io

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, numpy_helper
from onnx import helper as h

from analog_onnx.runtime import native_library_path

# one gate for tests that need the native kernel library (CI builds it; locally: `analog-onnx kernels build`)
needs_native = pytest.mark.skipif(native_library_path() is None, reason="native kernels not built")


def export_torch(module, example, *, dynamo: bool = False, opset: int = 17) -> onnx.ModelProto:
    """Export a torch module with a dynamic batch (TorchScript or dynamo exporter)."""
    import torch

    module = module.eval()
    if dynamo:
        batch = torch.export.Dim("batch", min=1)
        program = torch.onnx.export(module, (example,), dynamo=True, opset_version=opset,
                                    input_names=["x"], output_names=["y"],
                                    dynamic_shapes=({0: batch},), verbose=False)
        return program.model_proto
    buffer = io.BytesIO()
    torch.onnx.export(module, (example,), buffer, dynamo=False, opset_version=opset, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    return onnx.load_from_string(buffer.getvalue())


def gemm_relu(*, names: dict[str, str] | None = None, opset: int = 17) -> onnx.ModelProto:
    """x [batch, 4] -> Gemm (constant W, b) -> Relu -> y: the smallest model with one analog layer.

    ``names`` renames any of the values x, h, y, W, b and the nodes gemm, relu (to build clashes).
    """
    n = {"x": "x", "h": "h", "y": "y", "W": "W", "b": "b", "gemm": "gemm", "relu": "relu", **(names or {})}
    rng = np.random.default_rng(0)
    graph = h.make_graph(
        [h.make_node("Gemm", [n["x"], n["W"], n["b"]], [n["h"]], name=n["gemm"], transB=1),
         h.make_node("Relu", [n["h"]], [n["y"]], name=n["relu"])], "gemm_relu",
        [h.make_tensor_value_info(n["x"], TensorProto.FLOAT, ["batch", 4])],
        [h.make_tensor_value_info(n["y"], TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(rng.standard_normal((3, 4)).astype(np.float32), n["W"]),
         numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), n["b"])])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])


def as_ir(model: onnx.ModelProto) -> ir.Model:
    return ir.serde.deserialize_model(model)
