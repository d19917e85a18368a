"""Getting each model ready for a sweep: its clean and analog forms and what its input wants.

A clean model plus a config is transformed in memory; an already transformed model is used as
it is (its metadata says how it was made), unless a config is given, in which case it is
stripped and transformed again with that config. The clean form gives the clean accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from analog_onnx.arguments import expect
from analog_onnx.config import AnalogConfig
from analog_onnx.data.preprocess import Normalization, from_model, token_context
from analog_onnx.effects import enabled_effects
from analog_onnx.errors import ModelError
from analog_onnx.ops import DOMAIN
from analog_onnx.ops.nodes import check_nodes
from analog_onnx.transform import (
    load_model_within,
    read_analog_metadata,
    standard_model,
    strip_model,
    transform_model,
)

ModelSource = str | Path | onnx.ModelProto

ORT_FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}
ORT_INT_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}
MASK_NAMES = ("attention_mask", "mask")  # a token model's second input, fed the data's mask
MAX_MESSAGE = 2**31 - 1  # protobuf's limit on one serialized message
LEFT_IN_FILES = MAX_MESSAGE  # a model file over this many bytes keeps its weights in their data files


@dataclass
class PreparedModel:
    name: str
    source: str  # the file, or "<in memory>"
    clean: onnx.ModelProto | ir.Model  # ir: a model too big for one protobuf message, weights left in files
    analog: onnx.ModelProto | ir.Model
    config: AnalogConfig
    config_source: str  # "model metadata" or "given"
    noise_scale_input: str
    seed_input: str
    normalization: Normalization | None  # from the model's metadata
    notes: list[str] = field(default_factory=list)
    context: int | None = None  # a token model's longest window, from its metadata
    folder: str | None = None  # where the external data of an ir clean/analog model lies

    def serialized(self, model: onnx.ModelProto | ir.Model) -> bytes:
        """``model`` (this model's clean or analog form, or a variant of it) as a worker receives it:
        the graph, with the tensors of a big model referring to their data files in ``folder``."""
        proto = model if isinstance(model, onnx.ModelProto) else ir.serde.serialize_model(model)
        if proto.ByteSize() > MAX_MESSAGE:
            raise ModelError(f"{self.name}: the graph itself holds more than 2 GiB (weights the config "
                             "computes), which one protobuf message cannot take")
        return proto.SerializeToString()


def prepare_model(model: ModelSource, config: AnalogConfig | None, name: str) -> PreparedModel:
    source = "<in memory>" if isinstance(model, onnx.ModelProto) else str(model)
    proto = model if isinstance(model, onnx.ModelProto) else load_model_within(model, LEFT_IN_FILES)
    folder = str(Path(model).resolve().parent) if isinstance(proto, ir.Model) else None  # weights in their files
    meta = read_analog_metadata(proto)
    notes = []
    if meta is None:
        if config is None:
            raise ModelError(f"{name} has no analog ops; give --preset or --config to transform it in memory")
        clean = standard_model(proto)  # what onnxruntime can run: QONNX converted, old opsets upgraded
        analog, config_source = transform_model(clean, config), "given"
    else:
        clean = strip_model(proto)
        if config is None:  # run as it is: its analog nodes must be as the ops declare them, native or not
            check_nodes((proto if isinstance(proto, ir.Model) else ir.serde.deserialize_model(proto)).graph)
            analog, config, config_source = proto, meta.config, "model metadata"
        else:
            notes.append(f"{name} was transformed with config {meta.config.name!r}; "
                         f"re-transformed with {config.name!r} as asked")
            analog, config_source = transform_model(clean, config), "given"
    final = read_analog_metadata(analog)
    nodes = analog.graph.node if isinstance(analog, onnx.ModelProto) else analog.graph
    if enabled_effects(config) and not any(node.domain == DOMAIN for node in nodes):  # it would score as clean
        raise ModelError(f"{name} has no analog ops under config {config.name!r}: there is no noise to measure")
    return PreparedModel(name, source, clean, analog, config, config_source, final.noise_scale_input,
                         final.seed_input, from_model(proto), notes, token_context(proto), folder)


def model_sources(models: Any) -> list[ModelSource]:
    """One model or a sequence of them, each a file path or an ``onnx.ModelProto``; a file at most
    once (twice, it would score the same numbers twice: a sweep's draws are common to its models)."""
    many = isinstance(models, Sequence) and not isinstance(models, str)
    sources = list(models) if many else [models]
    seen: set[Path] = set()
    for source in sources:
        expect(source, (str, Path, onnx.ModelProto), "a model")
        if not isinstance(source, onnx.ModelProto):
            if Path(source).resolve() in seen:
                raise ModelError(f"model {source} is given twice")
            seen.add(Path(source).resolve())
    return sources


def model_names(models: list[ModelSource]) -> list[str]:
    """Short distinct names for the report: file stems; stems that collide get their folder's name
    (``a/m`` and ``b/m``), then a count (``m#2``)."""
    stems = [Path(m).name.removesuffix(".onnx") if not isinstance(m, onnx.ModelProto) else f"model{i}"
             for i, m in enumerate(models)]
    names: list[str] = []
    for model, stem in zip(models, stems, strict=True):
        if stems.count(stem) > 1 and not isinstance(model, onnx.ModelProto):
            stem = f"{Path(model).resolve().parent.name}/{stem}"  # resolved: "m.onnx" has a folder too
        name, count = stem, 1
        while name in names:
            count += 1
            name = f"{stem}#{count}"
        names.append(name)
    return names


@dataclass(frozen=True)
class ModelIO:
    """The data input (and a token model's attention-mask input) and the first output of a session."""

    input_name: str
    input_shape: tuple[int | None, ...]  # None for a symbolic dimension
    input_dtype: type
    output_name: str
    mask_name: str | None = None  # int64


def model_io(session: ort.InferenceSession, name: str, tokens: bool = False) -> ModelIO:
    """What ``session`` reads: one float input for samples; for ``tokens``, one integer input of
    token ids and optionally an integer attention mask (named as in ``MASK_NAMES``)."""
    inputs = session.get_inputs()
    masks = [i for i in inputs if tokens and i.name in MASK_NAMES and i.type == "tensor(int64)"]
    data = [i for i in inputs if i not in masks]
    if len(data) != 1 or len(masks) > 1:
        wanted = "token ids and at most one attention mask" if tokens else "exactly one"
        raise ModelError(f"{name} has {len(inputs)} data inputs ({', '.join(i.name for i in inputs)}); "
                         f"evaluate feeds {wanted}")
    tensor = data[0]
    types = ORT_INT_TYPES if tokens else ORT_FLOAT_TYPES
    if tensor.type not in types:
        wants = "token ids (int64 or int32)" if tokens else "float images or signals"
        data_kind = "token data" if tokens else "float samples"
        raise ModelError(f"{name}: input {tensor.name} is {tensor.type}; {data_kind} need a model that reads {wants}")
    shape = tuple(d if isinstance(d, int) and d > 0 else None for d in tensor.shape)
    mask = masks[0] if masks else None
    return ModelIO(tensor.name, shape, types[tensor.type], session.get_outputs()[0].name, mask.name if mask else None)
