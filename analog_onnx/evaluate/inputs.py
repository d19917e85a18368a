"""Turning a reader's samples into what one model's input takes: normalize, reshape, cast."""

from __future__ import annotations

import math

import numpy as np

from analog_onnx.data import Dataset
from analog_onnx.data.preprocess import Normalization
from analog_onnx.errors import AnalogError
from analog_onnx.evaluate.models import ModelIO


def _describe(shape: tuple[int | None, ...]) -> str:
    return "x".join("?" if d is None else str(d) for d in shape)


def fit_inputs(data: Dataset, io: ModelIO, normalization: Normalization | None, model_name: str) -> np.ndarray:
    """The samples normalized (on the reader's channel axis), then shaped for ``io``.

    Samples whose shape differs but whose element count matches the model's fixed input shape are
    reshaped (digits' [N, 1, 8, 8] into an MLP's [N, 64]); anything else is one clear error.
    """
    if normalization:
        with np.errstate(over="ignore", invalid="ignore"):  # checked below, as one error instead of a warning
            x = normalization.apply(data.x)
        if not np.isfinite(x).all():
            raise AnalogError(f"normalizing {data.name} with mean {list(normalization.mean)} and std "
                              f"{list(normalization.std)} ({normalization.source}) overflows float32")
    else:
        x = data.x
    want = io.input_shape[1:]
    have = x.shape[1:]
    if len(io.input_shape) == 0:
        raise AnalogError(f"{model_name}: input {io.input_name} is a scalar; it needs a batch dimension")
    if len(want) == len(have) and all(w is None or w == h for w, h in zip(want, have, strict=True)):
        fitted = x
    elif None not in want and math.prod(want) == math.prod(have):
        fitted = x.reshape((len(x), *want))
    else:
        raise AnalogError(f"data {data.name} gives samples of shape {_describe(have)} ({math.prod(have)} values) "
                          f"but {model_name} input {io.input_name} expects {_describe(want)}")
    return np.ascontiguousarray(fitted, dtype=io.input_dtype)


def check_labels(data: Dataset, num_outputs: int, model_name: str) -> None:
    """Every label must name one of the model's outputs."""
    needed = max(data.num_classes, int(data.y.max()) + 1)
    if needed > num_outputs:
        raise AnalogError(f"data {data.name} has {needed} classes but {model_name} has {num_outputs} outputs")
