"""Building and finding the native kernel library.

The library is compiled with the system C++ compiler on the machine that uses it, so
``-march=native`` is safe, into a per-user cache directory keyed by the onnxruntime version and a
hash of the sources, flags and CPU: upgrading onnxruntime or editing a kernel simply selects a
new path. Nothing is compiled at import or session time; ``analog-onnx kernels build`` does it.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import onnxruntime as ort

from analog_onnx.cache import cache_dir
from analog_onnx.errors import AnalogError
from analog_onnx.ops import DOMAIN, OPSET_VERSION
from analog_onnx.ops.native import headers

SOURCE_DIR = Path(__file__).parent
TRANSLATION_UNIT = SOURCE_DIR / "analog_ops.cc"
LIBRARY_NAME = "libanalog_onnx_ops.dylib" if sys.platform == "darwin" else "libanalog_onnx_ops.so"
# -ffp-contract=off keeps every float operation as written, so quantization is bit-identical to
# numpy; -fno-math-errno and -fno-trapping-math only let sqrt and rounding vectorize. Never -ffast-math.
CXXFLAGS = (
    "-std=c++17", "-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math",
    "-fvisibility=hidden", "-fPIC", "-shared", "-Wall", "-Wextra",
    f'-DANALOG_ONNX_DOMAIN="{DOMAIN}"', f"-DANALOG_ONNX_OPSET={OPSET_VERSION}",
)


@dataclass
class KernelStatus:
    """What ``analog-onnx kernels status`` reports."""

    built: bool
    library: str
    onnxruntime: str
    ort_api_version: int | None = None  # the C API version the library was compiled against
    ops: list[str] = field(default_factory=list)
    domain: str = DOMAIN
    opset: int = OPSET_VERSION
    error: str | None = None  # why a built library cannot be loaded

    def to_dict(self) -> dict:
        return asdict(self)


def _cpu_identity() -> str:
    """The CPU's instruction-set flags, so a home directory shared between machines never hands a
    ``-march=native`` build to a CPU that lacks its instructions."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


@lru_cache(maxsize=1)
def build_key() -> str:
    digest = hashlib.sha256()
    for path in sorted(SOURCE_DIR.glob("*.cc")) + sorted(SOURCE_DIR.glob("*.h")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update("\0".join(CXXFLAGS).encode())
    digest.update(f"{platform.machine()}\0{_cpu_identity()}".encode())
    return digest.hexdigest()[:16]


def library_path() -> Path:
    """Where the library for this onnxruntime and these sources lives (built or not)."""
    return cache_dir() / "kernels" / f"ort-{ort.__version__}-{build_key()}" / LIBRARY_NAME


def built_library() -> Path | None:
    path = library_path()
    return path if path.is_file() else None


def build_library(*, force: bool = False) -> Path:
    """Compile the library unless an up-to-date one exists; check that onnxruntime can load it."""
    target = library_path()
    if target.is_file() and not force:
        return target
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    if compiler is None:
        raise AnalogError("building the native kernels needs a C++17 compiler: install g++ (or set CXX)")
    include = headers.include_dir(cache_dir())
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, scratch = tempfile.mkstemp(dir=target.parent, suffix=".so.partial")
    os.close(handle)
    try:
        command = [compiler, *CXXFLAGS, "-I", str(include), str(TRANSLATION_UNIT), "-o", scratch]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            errors = [line for line in result.stderr.splitlines() if "error" in line] or result.stderr.splitlines()
            raise AnalogError(f"compiling the native kernels failed: {(errors or ['no output'])[0]}")
        problem = load_problem(Path(scratch))
        if problem:
            raise AnalogError(f"the freshly built native kernels do not load: {problem}")
        os.replace(scratch, target)
    finally:
        if os.path.exists(scratch):
            os.unlink(scratch)
    return target


def load_problem(path: Path) -> str | None:
    """Why onnxruntime cannot register the library at ``path`` (None: it can)."""
    try:
        ort.SessionOptions().register_custom_ops_library(str(path))
    except Exception as error:  # onnxruntime raises its own exception types
        return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return None


def kernel_status() -> KernelStatus:
    """Whether the library for this onnxruntime is built, and what it provides."""
    path = library_path()
    status = KernelStatus(built=path.is_file(), library=str(path), onnxruntime=ort.__version__)
    if not status.built:
        return status
    try:
        library = ctypes.CDLL(str(path))
        library.AnalogOnnxOps.restype = ctypes.c_char_p
        status.ops = library.AnalogOnnxOps().decode().split(",")
        status.ort_api_version = int(library.AnalogOnnxOrtApiVersion())
    except (OSError, AttributeError) as error:
        status.error = str(error)
        return status
    status.error = load_problem(path)
    return status
