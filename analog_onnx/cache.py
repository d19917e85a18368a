"""The one per-user cache folder of analog-onnx (built kernels, their headers, generated data).

The cache holds a library that every session loads, so its location must not depend on the
current folder: a relative ``$ANALOG_ONNX_CACHE`` or ``$HOME`` is refused, and a relative
``$XDG_CACHE_HOME`` is ignored, as the XDG base directory specification asks.
"""

from __future__ import annotations

import os
from pathlib import Path

from analog_onnx.errors import AnalogError


def cache_dir() -> Path:
    """``$ANALOG_ONNX_CACHE``, else ``$XDG_CACHE_HOME/analog-onnx``, else ``~/.cache/analog-onnx``."""
    explicit = os.environ.get("ANALOG_ONNX_CACHE")
    if explicit:
        return _absolute(Path(explicit).expanduser(), "ANALOG_ONNX_CACHE")
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "analog-onnx"
    return _absolute(Path.home(), "HOME") / ".cache" / "analog-onnx"


def _absolute(path: Path, variable: str) -> Path:
    if not path.is_absolute():
        raise AnalogError(f"${variable} is the relative path {str(path)!r}; the analog-onnx cache needs an "
                          "absolute folder (set ANALOG_ONNX_CACHE to one)")
    return path
