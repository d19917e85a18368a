"""The one per-user cache folder of analog-onnx (built kernels, their headers, generated data)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$ANALOG_ONNX_CACHE``, else ``$XDG_CACHE_HOME/analog-onnx``, else ``~/.cache/analog-onnx``."""
    if os.environ.get("ANALOG_ONNX_CACHE"):
        return Path(os.environ["ANALOG_ONNX_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "analog-onnx"
