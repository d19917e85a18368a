"""Checkpoints: plain dicts of tensors and JSON-like values, so ``torch.load(weights_only=True)``
reads them. Keys: format, arch, in_shape, num_classes, state_dict, config (the training config),
qat, hardware, normalization, tokens, record (what export writes into the model), history (one dict per
epoch), epoch, optimizer, scaler, best."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from analog_onnx.errors import AnalogError
from analog_onnx.files import atomic_output, first_line
from analog_onnx.train.zoo import BUILDERS, build_model

FORMAT = "analog-onnx-checkpoint-1"
CUSTOM_ARCH = "custom"
# what every reader relies on (normalization is None for a token model, whose "tokens" entry says
# its vocabulary and context)
ENTRIES = {"arch": str, "in_shape": (list, tuple), "num_classes": int, "state_dict": dict, "config": dict,
           "qat": (dict, type(None)), "normalization": (dict, type(None)), "record": dict}


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write atomically (:mod:`analog_onnx.files`), replacing the run's previous checkpoint."""
    with atomic_output(path, force=True) as scratch, open(scratch, "wb") as handle:
        torch.save({"format": FORMAT, **state}, handle)  # to a file of ours: a write error stays an OSError


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise AnalogError(f"no such checkpoint: {path}")
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
    for key, kind in ENTRIES.items():
        if not isinstance(state.get(key), kind):
            raise AnalogError(f"{path} is a damaged checkpoint: entry {key!r} is missing or of the wrong type")
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
