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


def fit_tokens(data: Dataset, io: ModelIO, normalization: Normalization | None, model_name: str,
               context: int | None) -> np.ndarray:
    """Token windows as ``io`` reads them: as they are, refused when longer than the model takes
    (its fixed sequence length, or the context its metadata records)."""
    if normalization is not None:
        raise AnalogError(f"{data.name} holds token ids: --mean/--std (normalization from {normalization.source}) "
                          "do not apply to them")
    if len(io.input_shape) != 2:
        raise AnalogError(f"{model_name}: input {io.input_name} has shape {_describe(io.input_shape)}; "
                          "token ids need [batch, sequence]")
    window, fixed = data.x.shape[1], io.input_shape[1]
    if fixed is not None and window != fixed:
        raise AnalogError(f"data {data.name} has windows of {window} tokens but {model_name} takes {fixed} "
                          f"(its input's fixed length); choose window={fixed}")
    if context is not None and window > context:
        raise AnalogError(f"data {data.name} has windows of {window} tokens but {model_name} takes at most {context} "
                          f"(its context, from its metadata); choose window={context} or shorter")
    return np.ascontiguousarray(data.x, dtype=io.input_dtype)


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
    """Every label must name one of the model's outputs (a next token: one of its vocabulary)."""
    needed = max(data.num_classes, int(data.y.max()) + 1)
    if needed > num_outputs:
        what = f"a vocabulary of {needed}" if data.y.ndim == 2 else f"{needed} classes"
        raise AnalogError(f"data {data.name} has {what} but {model_name} has {num_outputs} outputs")
