"""Helpers the tests share: exporting torch modules, small ONNX models built by hand or trained
with scikit-learn, one-node models of our ops.

Test files import from here, never from each other or from conftest.
"""

from __future__ import annotations

import functools
import io
import json
import warnings

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, numpy_helper
from onnx import helper as h

from analog_onnx.data import load_dataset
from analog_onnx.data.preprocess import PREPROCESS_KEY
from analog_onnx.ops import DOMAIN, OPSET_VERSION
from analog_onnx.ops.functions import function_protos
from analog_onnx.ops.schema import SCHEMAS
from analog_onnx.runtime import make_session


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


def op_model(op: str, attributes: dict, feeds: dict[str, np.ndarray], opset: int = 17) -> onnx.ModelProto:
    """A one-node model of ``op`` whose inputs are typed and shaped like ``feeds``, with every
    function body (public ops and helpers) as a transformed model has them."""
    inputs = [h.make_tensor_value_info(name, h.np_dtype_to_tensor_dtype(a.dtype), a.shape) for name, a in feeds.items()]
    element = h.np_dtype_to_tensor_dtype(next(iter(feeds.values())).dtype)
    names = SCHEMAS[op].outputs
    outputs = [h.make_tensor_value_info(name, element, None) for name in names]
    node = h.make_node(op, list(feeds), list(names), domain=DOMAIN, name=f"the_{op.lower()}", **attributes)
    graph = h.make_graph([node], op, inputs, outputs)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", opset), h.make_opsetid(DOMAIN, OPSET_VERSION)],
                        functions=function_protos(opset))


# -- small trained models for the evaluate tests (scikit-learn and onnx.helper, no torch) -------
@functools.cache
def digits_mlp_weights(hidden: int) -> tuple[np.ndarray, ...]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    train = load_dataset("digits", "train")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = MLPClassifier(hidden_layer_sizes=(hidden,), max_iter=200, random_state=0)
        clf.fit(train.x.reshape(len(train), -1), train.y)
    (w1, w2), (b1, b2) = clf.coefs_, clf.intercepts_
    return tuple(a.astype(np.float32) for a in (w1, b1, w2, b2))


def digits_mlp(hidden: int = 32, *, preprocess: dict | None = None, input_shape: tuple = ("N", 64)) -> onnx.ModelProto:
    """A 64-(hidden)-10 ReLU MLP trained on the digits train split; input [N, 64] (flat 8x8 images)."""
    w1, b1, w2, b2 = digits_mlp_weights(hidden)
    initializers = [numpy_helper.from_array(a, n) for a, n in ((w1, "W1"), (b1, "b1"), (w2, "W2"), (b2, "b2"))]
    nodes = [h.make_node("Gemm", ["x", "W1", "b1"], ["h"], name="fc1"),
             h.make_node("Relu", ["h"], ["r"], name="relu1"),
             h.make_node("Gemm", ["r", "W2", "b2"], ["logits"], name="fc2")]
    graph = h.make_graph(nodes, "digits_mlp", [h.make_tensor_value_info("x", TensorProto.FLOAT, input_shape)],
                              [h.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], initializers)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    if preprocess is not None:
        h.set_model_props(model, {PREPROCESS_KEY: json.dumps(preprocess)})
    onnx.checker.check_model(model)
    return model


def ort_accuracy(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray) -> float:
    """Accuracy computed directly with onnxruntime, the reference the engine must match."""
    session = make_session(model)
    logits = session.run(None, {session.get_inputs()[0].name: x})[0]
    return float(np.mean(logits.argmax(axis=1) == y))


def residual_block(rng: np.random.Generator, *, training_bn: bool = False) -> onnx.ModelProto:
    """Conv-BN-ReLU, Conv(+bias)-BN-Add(residual)-ReLU, pooling, Gemm(+bias)-ReLU."""
    def weight(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.4).astype(np.float32), name)

    def bn(prefix: str) -> list[onnx.TensorProto]:
        return [numpy_helper.from_array(a.astype(np.float32), f"{prefix}_{n}") for n, a in
                (("g", rng.uniform(0.5, 2, 4)), ("b", rng.normal(0, 0.3, 4)), ("m", rng.normal(0, 0.3, 4)),
                 ("v", rng.uniform(0.5, 2, 4)))]

    bn_extra = {"training_mode": 1} if training_bn else {}
    nodes = [
        h.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        h.make_node("BatchNormalization", ["c1", "bn1_g", "bn1_b", "bn1_m", "bn1_v"], ["n1"], epsilon=1e-3,
                    **bn_extra),
        h.make_node("Relu", ["n1"], ["r1"]),
        h.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        h.make_node("BatchNormalization", ["c2", "bn2_g", "bn2_b", "bn2_m", "bn2_v"], ["n2"]),
        h.make_node("Add", ["n2", "r1"], ["a2"]),
        h.make_node("Relu", ["a2"], ["r2"]),
        h.make_node("GlobalAveragePool", ["r2"], ["p"]),
        h.make_node("Flatten", ["p"], ["f"]),
        h.make_node("Gemm", ["f", "w3", "b3"], ["g"], transB=1),
        h.make_node("Relu", ["g"], ["y"]),
    ]
    initializers = [weight("w1", 4, 3, 3, 3), weight("w2", 4, 4, 3, 3), weight("b2", 4), weight("w3", 5, 4),
                    weight("b3", 5), *bn("bn1"), *bn("bn2")]
    graph = h.make_graph(nodes, "block", [h.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 6, 6])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])], initializers)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 15 if training_bn else 13)])


def one_line_error(result: tuple[int, str, str], fragment: str) -> None:
    """A CLI result (``run_cli``) that failed as a user mistake must: exit 2, one line naming ``fragment``."""
    code, _, err = result
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and fragment in err, err
