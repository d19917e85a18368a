"""Per-channel normalization ``(x - mean[c]) / std[c]`` on axis 1 of a reader's output.

A model exported by our trainer says how it wants its inputs in the ``analog_onnx.preprocess``
metadata entry (JSON ``{"mean": [...], "std": [...]}``); for other models the user gives
``--mean``/``--std``. Flags win over metadata, so a user can correct a wrong export.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from analog_onnx.arguments import float32_problem
from analog_onnx.errors import AnalogError

if TYPE_CHECKING:  # onnx_ir is imported by the commands that read a model with it
    import onnx_ir as ir

PREPROCESS_KEY = "analog_onnx.preprocess"
TOKENS_KEY = "analog_onnx.tokens"  # a token model's {"vocab_size": V, "context": T}: its longest window


@dataclass(frozen=True)
class Normalization:
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str  # "model metadata" or "flags", for the report

    def __post_init__(self) -> None:
        if not self.mean or not self.std:
            raise AnalogError("normalization needs at least one mean and one std value")
        for name, values in (("mean", self.mean), ("std", self.std)):  # applied in float32
            problem = next((p for p in map(float32_problem, values) if p), None)
            if problem:
                raise AnalogError(f"normalization {name} from {self.source}: a value {problem}, got {list(values)}")
        if any(s <= 0 for s in self.std):
            raise AnalogError(f"normalization std must be positive, got {list(self.std)}")

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Normalize float32 ``x`` of shape [N, C, ...]; one value broadcasts to every channel."""
        channels = x.shape[1] if x.ndim > 1 else 1
        shape = (1, -1) + (1,) * (x.ndim - 2)
        mean, std = (self._per_channel(v, channels, name).reshape(shape)
                     for v, name in ((self.mean, "mean"), (self.std, "std")))
        return ((x - mean) / std).astype(np.float32)

    def _per_channel(self, values: tuple[float, ...], channels: int, name: str) -> np.ndarray:
        if len(values) not in (1, channels):
            raise AnalogError(f"normalization {name} from {self.source} has {len(values)} values "
                              f"but the data has {channels} channels (axis 1)")
        return np.broadcast_to(np.asarray(values, np.float32), (channels,))

    def to_dict(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "std": list(self.std), "source": self.source}


def _metadata(model: onnx.ModelProto | ir.Model, key: str) -> str | None:
    props = model.metadata_props
    return props.get(key) if isinstance(props, dict) else next((p.value for p in props if p.key == key), None)


def from_model(model: onnx.ModelProto | ir.Model) -> Normalization | None:
    """The model's ``analog_onnx.preprocess`` metadata, if it has one."""
    raw = _metadata(model, PREPROCESS_KEY)
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        mean, std = data.get("mean", [0.0]), data.get("std", [1.0])
        return Normalization(tuple(float(m) for m in mean), tuple(float(s) for s in std), "model metadata")
    except (ValueError, TypeError, AttributeError) as e:
        raise AnalogError(f"model metadata {PREPROCESS_KEY} is not {{\"mean\": [...], \"std\": [...]}}: {e}") from None


def token_context(model: onnx.ModelProto | ir.Model) -> int | None:
    """The longest window a token model accepts, from its ``analog_onnx.tokens`` metadata."""
    raw = _metadata(model, TOKENS_KEY)
    if raw is None:
        return None
    try:
        context = json.loads(raw)["context"]
    except (ValueError, TypeError, KeyError) as e:
        raise AnalogError(f"model metadata {TOKENS_KEY} is not {{\"vocab_size\": V, \"context\": T}}: {e}") from None
    if not isinstance(context, int) or context < 1:
        raise AnalogError(f"model metadata {TOKENS_KEY}: context must be a whole number >= 1, got {context!r}")
    return context


def from_flags(mean: Sequence[float] | None, std: Sequence[float] | None) -> Normalization | None:
    """``--mean``/``--std``; either alone means std 1 or mean 0."""
    if mean is None and std is None:
        return None
    return Normalization(tuple(mean or (0.0,)), tuple(std or (1.0,)), "flags")

