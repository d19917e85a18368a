"""The one place that makes onnxruntime sessions for analog-onnx: provider, threads, and our
native kernel library.

A transformed model carries ONNX function bodies for every analog op, so it runs anywhere. When
the native library is registered, onnxruntime prefers its kernels over those function bodies (and
never instantiates the helper functions), which is much faster; when it is not built we fall back
to the function bodies and say so once per process.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import onnx
import onnxruntime as ort

from analog_onnx import native_graph
from analog_onnx.errors import AnalogError, ModelError
from analog_onnx.files import first_line
from analog_onnx.ops import DOMAIN
from analog_onnx.ops.native.build import built_library

ModelLike = str | Path | bytes | onnx.ModelProto

REQUIRE_NATIVE_ENV = "ANALOG_ONNX_REQUIRE_NATIVE"
BUILD_HINT = "analog-onnx kernels build"
EXTERNAL_DATA_FOLDER = "session.model_external_initializers_file_folder_path"  # where a model given as
# bytes finds its external data
_KERNEL_ERROR = re.compile(re.escape(DOMAIN) + r"\.\w+ node '.*")

log = logging.getLogger(__name__)
_fallback_reported = False


def native_library_path() -> Path | None:
    """The built native kernel library for this onnxruntime and these sources, or None."""
    return built_library()


def native_required() -> bool:
    """``$ANALOG_ONNX_REQUIRE_NATIVE=1`` (CI) turns the silent fallback into an error."""
    return os.environ.get(REQUIRE_NATIVE_ENV, "") == "1"


def session_options(threads: int | None = None, *, native: bool | None = None) -> ort.SessionOptions:
    """Options with ``threads`` intra-op threads and, unless ``native`` is False, our kernels.

    ``native=None`` uses the library when it is built; ``native=True`` requires it.
    """
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    # fatal only: every error onnxruntime logs also reaches make_session as an exception, which
    # becomes one error line; logged too, it would be a second line, with a file's text raw in it
    options.log_severity_level = 4
    library = _native_library(native)
    if library is not None:
        try:
            options.register_custom_ops_library(str(library))
        except Exception as error:  # onnxruntime raises its own exception types
            raise AnalogError(f"cannot load the native analog kernels {library} ({first_line(error)}); "
                              f"rebuild them with `{BUILD_HINT} --force`") from None
    return options


def make_session(model: ModelLike, *, threads: int | None = None, native: bool | None = None,
                 folder: str | Path | None = None) -> ort.InferenceSession:
    """An onnxruntime CPU session for a (possibly transformed) model; see ``session_options``.
    ``folder``: where the external data of a model given as bytes or a proto lies."""
    options = session_options(threads, native=native)
    if isinstance(model, str | Path):
        folder = None  # a file finds its own
    if _native_library(native) is not None:
        prepared = native_graph.prepare(model, folder)
        if prepared is not model and isinstance(model, str | Path):  # it refers to the file's external data
            folder = Path(model).resolve().parent
        model = prepared
    if folder is not None:
        options.add_session_config_entry(EXTERNAL_DATA_FOLDER, str(Path(folder).resolve()))
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    elif isinstance(model, Path):
        model = str(model)
    try:
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own types: a kernel refusing the model, a bad graph
        refusal = _KERNEL_ERROR.search(str(error))
        raise ModelError(refusal.group(0).strip() if refusal else
                         f"onnxruntime cannot load the model: {first_line(error)}") from None


def _native_library(native: bool | None) -> Path | None:
    global _fallback_reported
    if native is False:
        return None
    library = native_library_path()
    if library is None and (native or native_required()):
        raise AnalogError(f"the native analog kernels are not built for onnxruntime {ort.__version__}: "
                          f"run `{BUILD_HINT}`")
    if library is None and not _fallback_reported:
        _fallback_reported = True
        log.warning("native analog kernels are not built (run `%s`); using the ONNX function bodies, "
                    "which are much slower", BUILD_HINT)
    return library
