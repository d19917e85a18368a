"""Export a trained model to ONNX: noise left out, QAT quantizers kept, checked against torch.

Choices (see docs/training.md):

- The TorchScript exporter (``dynamo=False``) in ``PRESERVE`` mode on an eval-mode copy: it is
  fast (the placement of the twins is derived from an export at every training start) and it
  keeps BatchNormalization as its own node instead of folding it into the convolution, so the
  exported graph has one node per module call: the noise sites and the analog weights that
  ``transform`` sees are the ones the trainer simulated. Node names carry the module path.
- Noise is never exported (``transform`` puts it back for any hardware). QAT activation
  quantizers become QuantizeLinear/DequantizeLinear (a Clip first where the integer type does
  not saturate at the bound) for up to 8 bits, else ``ai.analog.Quantize`` with its function
  body. QAT weights up to 8 bits are stored as int8 with a DequantizeLinear (per output channel
  for Conv); wider ones as float32 values already on their grid.
"""

from __future__ import annotations

import copy
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import torch
from torch import nn

from analog_onnx.data.preprocess import PREPROCESS_KEY, TOKENS_KEY
from analog_onnx.errors import AnalogError
from analog_onnx.ops import DOMAIN, OPSET_VERSION
from analog_onnx.passes.add_functions import AddAnalogFunctionsPass
from analog_onnx.runtime import session_options
from analog_onnx.train.attach import WeightQuant, strip_twins
from analog_onnx.train.qat import QatSpec, attach_qat, quantize_weights_

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
TRAIN_KEY = "analog_onnx.train"


@dataclass
class Exported:
    """An export and the torch module it was traced from (plain, with the QAT quantizers)."""

    model: onnx.ModelProto
    module: nn.Module
    quantized: bool


def to_onnx(model: nn.Module, in_shape: tuple[int, ...], *, qat: QatSpec | None = None,
            opset: int = OPSET, tokens: bool = False) -> Exported:
    """Export a copy of ``model`` (twins removed, QAT quantizers kept) with a dynamic batch axis;
    with ``tokens`` its input is int64 token ids [N, T] and T is dynamic too (up to ``in_shape``)."""
    work = copy.deepcopy(model).cpu().float().eval()
    strip_twins(work)
    qat_weights: dict[str, WeightQuant] = {}
    if qat is not None:
        qat_weights = quantize_weights_(work, qat)
        attach_qat(work, qat, weights=False)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                work, (torch.zeros(2, *in_shape, dtype=torch.int64 if tokens else torch.float32),), buffer,
                dynamo=False, opset_version=opset,
                training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=True,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={name: {0: "batch", 1: "sequence"} if tokens else {0: "batch"}
                              for name in (INPUT_NAME, OUTPUT_NAME)},
                custom_opsets={DOMAIN: OPSET_VERSION} if qat is not None and qat.bits > 8 else None)
        except Exception as e:  # the exporter raises many types; the user needs the message
            raise AnalogError(f"torch.onnx.export failed for {type(model).__name__}: {e}") from None
    ir_model = ir.serde.deserialize_model(onnx.load_from_string(buffer.getvalue()))
    _materialize_identities(ir_model.graph)
    _store_integer_weights(ir_model.graph, {k: q for k, q in qat_weights.items() if q.bits <= 8})
    if any(node.domain == DOMAIN for node in ir_model.graph):
        AddAnalogFunctionsPass()(ir_model)
    return Exported(ir.serde.serialize_model(ir_model), work, qat is not None)


def _materialize_identities(graph: ir.Graph) -> None:
    """The exporter shares equal initializers through Identity nodes; give each its own constant,
    so every layer weight is an initializer that ``transform`` recognizes."""
    for node in [n for n in graph if n.op_type == "Identity" and n.domain == ""]:
        source, output = node.inputs[0], node.outputs[0]
        if source is None or not source.is_initializer() or output.is_graph_output():
            continue
        name = output.name
        output.name = f"{name}/shared"
        value = ir.Value(name=name, const_value=source.const_value, type=source.type, shape=source.shape)
        graph.register_initializer(value)
        output.replace_all_uses_with(value)
        graph.remove(node, safe=True)


def _store_integer_weights(graph: ir.Graph, weights: dict[str, WeightQuant]) -> None:
    """Replace each QAT weight (float values on its grid) by int8 codes and a DequantizeLinear."""
    for name, quant in weights.items():
        value = graph.initializers.get(name)
        if value is None or not value.uses():
            continue
        w = value.const_value.numpy().astype(np.float32)
        n = np.float32((1 << (quant.bits - 1)) - 1)
        per_channel = quant.axis == 1
        peak = np.abs(w.reshape(w.shape[0], -1) if per_channel else w.reshape(1, -1)).max(axis=1)
        scale = np.where(peak > 0, peak / n, np.float32(1.0)).astype(np.float32)
        shaped = scale.reshape([-1] + [1] * (w.ndim - 1)) if per_channel else scale.reshape(())
        codes = np.rint(w / shaped).astype(np.int8)
        scale = scale if per_channel else scale.reshape(())
        parts = [_initializer(graph, f"{name}_quantized", codes), _initializer(graph, f"{name}_scale", scale),
                 _initializer(graph, f"{name}_zero_point", np.zeros(scale.shape, np.int8))]
        node = ir.node("DequantizeLinear", parts, {"axis": 0} if per_channel else {}, name=f"{name}/DequantizeLinear")
        node.outputs[0].name = f"{name}_dequantized"
        node.outputs[0].type, node.outputs[0].shape = value.type, value.shape
        value.replace_all_uses_with(node.outputs[0])
        graph.insert_before(graph.node(0), node)
        del graph.initializers[name]


def _initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    tensor = ir.tensor(array, name=name)
    value = ir.Value(name=name, const_value=tensor, type=ir.TensorType(tensor.dtype), shape=ir.Shape(array.shape))
    graph.register_initializer(value)
    return value


def check_export(exported: Exported, inputs: np.ndarray) -> float:
    """Run the export in onnxruntime and compare with torch; returns the largest difference.

    A float model must agree to float tolerance on every sample. In a quantized model a value
    can land on the other side of a rounding tie (the two runtimes sum in different orders) and
    move one activation by one step, so there the predicted classes must agree on 99% of the
    samples and the mean difference must stay far below the logits' scale.
    """
    with torch.no_grad():
        expected = exported.module(torch.from_numpy(inputs)).numpy()
    options = session_options()
    # exact ONNX semantics: ORT's graph optimizations turn QDQ groups into integer kernels with a
    # rounded int32 bias, which is deployment arithmetic, not the model's definition
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(exported.model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    got = session.run(None, {INPUT_NAME: inputs})[0]
    diff = np.abs(got - expected)
    scale = 1.0 + float(np.abs(expected).max())
    if exported.quantized:
        same_class = float((got.argmax(axis=-1) == expected.argmax(axis=-1)).mean())
        ok = same_class >= 0.99 and float(diff.mean()) <= 1e-2 * scale
    else:
        ok = float(diff.max()) <= 1e-4 * scale
    if not ok:
        raise AnalogError(f"exported model disagrees with torch: max |diff| {diff.max():.3g}, "
                          f"mean {diff.mean():.3g}, logits up to {scale - 1:.3g}")
    return float(diff.max())


def add_metadata(model: onnx.ModelProto, *, mean: list[float] | None, std: list[float] | None,
                 train: dict[str, Any], tokens: dict[str, int] | None = None) -> None:
    """Write the normalization (read by ``evaluate``; none for token models), the token model's
    vocabulary and context (``TOKENS_KEY``) and the training record into the model."""
    props = {p.key: p for p in model.metadata_props}
    entries = [(TRAIN_KEY, train)]
    if mean is not None:
        entries.append((PREPROCESS_KEY, {"mean": mean, "std": std}))
    if tokens is not None:
        entries.append((TOKENS_KEY, tokens))
    for key, payload in entries:
        entry = props.get(key) or model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(payload, sort_keys=True)


def export_checkpoint(checkpoint: str | Path, output: str | Path, *, force: bool = False,
                      check_samples: int = 64) -> float:
    """``analog-onnx export``: checkpoint to ONNX, checked on normalized random inputs. Returns max |diff|."""
    from analog_onnx.train.checkpoint import load_checkpoint, model_from_checkpoint
    from analog_onnx.transform import save_model

    state = load_checkpoint(checkpoint)
    model = model_from_checkpoint(state)
    tokens = state.get("tokens")
    exported = to_onnx(model, tuple(state["in_shape"]), qat=QatSpec(**state["qat"]) if state["qat"] else None,
                       tokens=tokens is not None)
    rng = np.random.default_rng(0)
    inputs = rng.integers(0, tokens["vocab_size"], (check_samples, *state["in_shape"])) if tokens else \
        rng.standard_normal((check_samples, *state["in_shape"])).astype(np.float32)
    difference = check_export(exported, inputs)
    normalization = state["normalization"] or {"mean": None, "std": None}
    add_metadata(exported.model, mean=normalization["mean"], std=normalization["std"], train=state["record"],
                 tokens=tokens)
    save_model(exported.model, output, force=force, inputs=[checkpoint])
    return difference
