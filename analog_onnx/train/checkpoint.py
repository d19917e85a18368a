"""Checkpoints: plain dicts of tensors and JSON-like values, so ``torch.load(weights_only=True)``
reads them. Keys: format, arch, in_shape, num_classes, state_dict, config (the training config),
qat, hardware, normalization, tokens, record (what export writes into the model), history (one dict per
epoch), epoch, optimizer, scheduler, scaler, best.

A checkpoint is a file a user may hand us damaged: :func:`load_checkpoint` checks the structure of
every entry its readers use, in one place, so that export, fine-tuning and resuming meet one error
naming the entry instead of a crash deep inside torch or an exported model that cannot be used."""

from __future__ import annotations

import json
import math
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from analog_onnx.config import MAX_INT
from analog_onnx.errors import AnalogError
from analog_onnx.files import atomic_output, first_line
from analog_onnx.train.qat import QatSpec
from analog_onnx.train.zoo import BUILDERS, build_model

FORMAT = "analog-onnx-checkpoint-1"
CUSTOM_ARCH = "custom"
Check = Callable[[Any, dict[str, Any]], str | None]  # (entry, whole checkpoint) -> what is wrong, or None


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _dict_of(value: Any, *keys: str) -> bool:
    """Whether ``value`` is a dict of exactly these keys."""
    return isinstance(value, dict) and set(value) == set(keys)


def _in_shape(value: Any, state: dict[str, Any]) -> str | None:
    if not isinstance(value, list | tuple) or not value or not all(_integer(d) and 1 <= d <= MAX_INT for d in value):
        return "must be a list of positive sizes"
    return None


def _num_classes(value: Any, state: dict[str, Any]) -> str | None:
    return None if _integer(value) and value >= 2 else "must be an integer >= 2"


def _state_dict(value: Any, state: dict[str, Any]) -> str | None:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in value.items()):
        return "must map parameter names to tensors"
    if not all(torch.isfinite(v).all() for v in value.values() if v.is_floating_point()):
        return "holds a weight that is not finite"
    return None


def _qat(value: Any, state: dict[str, Any]) -> str | None:
    if value is None:
        return None
    if not _dict_of(value, "bits", "act_scale", "weight_bits") or not _integer(value["bits"]) \
            or not _integer(value["weight_bits"]) or not _number(value["act_scale"]):
        return "must be None or a dict of bits, act_scale and weight_bits (integers, a number)"
    try:
        QatSpec(**value)
    except AnalogError as e:
        return f"is not a valid QAT setting: {e}"
    return None


def _normalization(value: Any, state: dict[str, Any]) -> str | None:
    """Per input channel: evaluate divides by std, so each must be > 0."""
    if state.get("tokens") is not None:
        return None if value is None else "must be None for a token model (it reads token ids as they are)"
    if value is None:
        return "is missing (a model of samples needs its mean and std)"
    channels = state["in_shape"][0]
    if not _dict_of(value, "mean", "std") or not all(isinstance(value[k], list) and len(value[k]) == channels
                                                 and all(_number(v) for v in value[k]) for k in ("mean", "std")):
        return f"must hold mean and std lists of one finite number per input channel ({channels})"
    if not all(s > 0 for s in value["std"]):
        return "has a std that is not > 0"
    return None


def _tokens(value: Any, state: dict[str, Any]) -> str | None:
    if value is None:
        return None
    if not _dict_of(value, "vocab_size", "context") or value["vocab_size"] != state["num_classes"] \
            or value["context"] != state["in_shape"][0]:
        return "must be None or a dict of vocab_size (num_classes) and context (the input length)"
    return None


def _json(value: Any, state: dict[str, Any]) -> str | None:
    """Export writes the record into the model as JSON."""
    try:
        json.dumps(value, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        return f"is not plain JSON data ({first_line(e)})"
    return None


def _kind(kind: type) -> Check:
    return lambda value, state: None if isinstance(value, kind) else f"must be a {kind.__name__}"


def _epoch(value: Any, state: dict[str, Any]) -> str | None:
    return None if _integer(value) and value >= 1 else "must be the number of epochs trained (an integer >= 1)"


def _history(value: Any, state: dict[str, Any]) -> str | None:
    """Resuming appends to it and writes it out as metrics.jsonl."""
    if not isinstance(value, list) or len(value) != state["epoch"] or not all(
            isinstance(e, dict) and all(isinstance(k, str) and isinstance(v, int | float | None) for k, v in e.items())
            for e in value):
        return "must be a list of one dict of numbers per epoch trained"
    return None


def _best(value: Any, state: dict[str, Any]) -> str | None:
    """Resuming compares each epoch with the best value (a number when selecting on validation)."""
    needed = _number if state["config"].get("select") == "val" else (lambda v: v is None or _number(v))
    if not isinstance(value, dict) or not _integer(value.get("epoch")) or not needed(value.get("value")):
        return "must be a dict with the best epoch and its value"
    return None


def _optimizer(value: Any, state: dict[str, Any]) -> str | None:
    if not _dict_of(value, "state", "param_groups") or not isinstance(value["state"], dict) \
            or not isinstance(value["param_groups"], list) \
            or not all(isinstance(v, dict) for v in [*value["state"].values(), *value["param_groups"]]):
        return "must be a dict of state and param_groups (dicts per parameter and per group)"
    return None


# what every reader relies on, checked in this order (later checks read earlier entries); a token
# model has no normalization, and its "tokens" entry says its vocabulary and context
ENTRIES: dict[str, Check] = {
    "arch": _kind(str), "in_shape": _in_shape, "num_classes": _num_classes, "state_dict": _state_dict,
    "config": _kind(dict), "qat": _qat, "tokens": _tokens, "normalization": _normalization, "record": _json,
}
# what resuming a run needs besides
RESUME_ENTRIES: dict[str, Check] = {
    "epoch": _epoch, "history": _history, "best": _best, "optimizer": _optimizer, "scheduler": _kind(dict),
    "scaler": _kind(dict),
}


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write atomically (:mod:`analog_onnx.files`), replacing the run's previous checkpoint."""
    with atomic_output(path, force=True) as scratch, open(scratch, "wb") as handle:
        torch.save({"format": FORMAT, **state}, handle)  # to a file of ours: a write error stays an OSError


def checkpoint_file(path: str | Path) -> Path:
    """``path`` when it is a file, else one error: a folder is no checkpoint (and has no name to
    derive an output's from: ``export .``)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise AnalogError(f"checkpoint {path} is a folder; give the checkpoint file (best.pt or last.pt)")
    if not path.is_file():
        raise AnalogError(f"no such checkpoint: {path}")
    return path


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", *, resume: bool = False
                    ) -> dict[str, Any]:
    """The checkpoint at ``path``, every entry a reader uses checked (with ``resume``, also the
    training state), so a damaged one is one error rather than a crash or an unusable export."""
    path = checkpoint_file(path)
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:  # torch explains weights_only over a page; name the object instead
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        raise AnalogError(f"{path} is not an analog-onnx checkpoint: it holds Python objects"
                          f"{f' ({found.group(1)})' if found else ''}, not only tensors and plain data") from None
    except Exception as e:  # zip and format errors all mean "not our checkpoint"
        raise AnalogError(f"{path} is not a readable checkpoint ({type(e).__name__}: {first_line(e)})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise AnalogError(f"{path} is not an analog-onnx training checkpoint")
    for key, check in (ENTRIES | RESUME_ENTRIES if resume else ENTRIES).items():
        problem = check(state.get(key), state)
        if problem is not None:
            raise AnalogError(f"damaged checkpoint {path}: entry {key!r} {problem}")
    return state


def model_from_checkpoint(state: dict[str, Any]) -> nn.Module:
    """The zoo model of a checkpoint with its trained weights (plain: no twins attached)."""
    arch = state["arch"]
    if arch not in BUILDERS:
        raise AnalogError(f"checkpoint holds a {arch!r} model, not a zoo architecture: export it from Python "
                          "with analog_onnx.train.export.to_onnx(your_model, ...)")
    try:
        model = build_model(arch, tuple(int(d) for d in state["in_shape"]), int(state["num_classes"]))
        model.load_state_dict(state["state_dict"])
    except (TypeError, ValueError, RuntimeError) as e:  # torch reports a mismatch over many lines
        raise AnalogError(f"the checkpoint's {arch} weights do not fit its own model: {first_line(e)}") from None
    return model.eval()
