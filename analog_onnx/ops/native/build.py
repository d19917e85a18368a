"""Building and finding the native kernel library.

The library is compiled with the system C++ compiler on the machine that uses it, so
``-march=native`` is safe, into a per-user cache directory keyed by the onnxruntime version and a
hash of the sources, flags and CPU: upgrading onnxruntime or editing a kernel simply selects a
new path. Nothing is compiled at import or session time; ``analog-onnx kernels build`` does it.

The sources are the ``.cc`` and ``.h`` files beside this module and one generated header,
``analog_generated.h`` (``generate.py``: what the kernels share with the Python side, written from
it), which is part of the key.

Loading a library runs its code, and loading a truncated file can kill the process (SIGBUS), so
the build records the library's size and sha256 beside it and nothing loads a library that does
not match its record, or that lies in a folder other users could write to.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import platform
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import onnxruntime as ort

from analog_onnx.cache import cache_dir
from analog_onnx.errors import AnalogError
from analog_onnx.files import atomic_outputs, first_line
from analog_onnx.ops import DOMAIN, OPSET_VERSION
from analog_onnx.ops.native import headers

SOURCE_DIR = Path(__file__).parent
LIBRARY_NAME = "libanalog_onnx_ops.dylib" if sys.platform == "darwin" else "libanalog_onnx_ops.so"
RECORD_NAME = "build-record.json"  # {"size": bytes, "sha256": hex} of the library, written by the build
REBUILD_HINT = "rebuild it with `analog-onnx kernels build`"
# -ffp-contract=off keeps every float operation as written, so quantization is bit-identical to
# numpy; -fno-math-errno and -fno-trapping-math only let sqrt and rounding vectorize. Never -ffast-math.
CXXFLAGS = (
    "-std=c++17", "-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math",
    "-fvisibility=hidden", "-fPIC", "-shared", "-Wall", "-Wextra",
    f'-DANALOG_ONNX_DOMAIN="{DOMAIN}"', f"-DANALOG_ONNX_OPSET={OPSET_VERSION}",
)
# Extra compiler flags, appended after CXXFLAGS and part of the build key: for example
# "-mno-avx512f" builds the AVX2 path on an AVX-512 machine (to check or time it).
EXTRA_FLAGS_VARIABLE = "ANALOG_ONNX_CXXFLAGS"


def compiler() -> str | None:
    """The C++ compiler: ``$CXX`` or g++, as found on PATH (None when there is none)."""
    return shutil.which(os.environ.get("CXX", "g++"))


def compiler_flags() -> tuple[str, ...]:
    """CXXFLAGS and the extra flags of ``$ANALOG_ONNX_CXXFLAGS``."""
    return (*CXXFLAGS, *os.environ.get(EXTRA_FLAGS_VARIABLE, "").split())


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
def generated_header() -> str:
    from analog_onnx.ops.native import generate  # imports the device models: only when building or keying

    return generate.header()


def translation_units() -> list[Path]:
    return sorted(SOURCE_DIR.glob("*.cc"))


def build_key() -> str:
    return _build_key(compiler_flags())


@lru_cache(maxsize=4)
def _build_key(flags: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    for path in translation_units() + sorted(SOURCE_DIR.glob("*.h")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(generated_header().encode() + b"\0")
    digest.update("\0".join(flags).encode())
    digest.update(f"{platform.machine()}\0{_cpu_identity()}".encode())
    return digest.hexdigest()[:16]


def library_path() -> Path:
    """Where the library for this onnxruntime and these sources lives (built or not)."""
    return cache_dir() / "kernels" / f"ort-{ort.__version__}-{build_key()}" / LIBRARY_NAME


def built_library() -> Path | None:
    """The library, verified against its build record; None when it is not built.

    A library that fails the check is an error, never loaded: a damaged file can crash the process.
    """
    path = library_path()
    if not path.is_file():
        return None
    problem = untrusted_folder(path) or damage(path)
    if problem:
        raise AnalogError(problem)
    return path


def _record(path: Path) -> dict[str, object]:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"size": path.stat().st_size, "sha256": digest.hexdigest()}


def damage(path: Path) -> str | None:
    """Why the library at ``path`` does not match what the build recorded (None: it matches)."""
    try:
        recorded = json.loads((path.parent / RECORD_NAME).read_text())
    except (OSError, ValueError):
        return f"the native kernel library {path} has no readable build record; {REBUILD_HINT}"
    actual = _record(path)
    if actual != recorded:
        return (f"the native kernel library {path} is damaged ({actual['size']} bytes, the build wrote "
                f"{recorded.get('size') if isinstance(recorded, dict) else '?'}); {REBUILD_HINT}")
    return None


def untrusted_folder(path: Path) -> str | None:
    """Why the library at ``path`` or a folder above it (up to the cache) could be replaced by
    another user: writable by others, or owned by someone else (None: it could not)."""
    chain = [path, *path.parents]
    root = cache_dir()
    for item in chain[: chain.index(root) + 1] if root in chain else chain[:1]:
        try:
            info = item.stat()
        except OSError:  # not there (yet): nothing to trust or distrust
            continue
        if info.st_mode & stat.S_IWOTH:
            return f"{item} is writable by every user, so the native kernels in it cannot be trusted; chmod o-w it"
        if info.st_uid not in (os.getuid(), 0):
            return f"{item} belongs to another user, so the native kernels in it cannot be trusted"
    return None


def build_library(*, force: bool = False) -> tuple[Path, bool]:
    """Compile the library unless a verified one exists; check that onnxruntime can load it.

    Returns the path and whether it was (re)built.
    """
    target = library_path()
    problem = untrusted_folder(target)
    if problem:
        raise AnalogError(problem)
    if target.is_file() and not force and damage(target) is None:
        return target, False
    cxx = compiler()
    if cxx is None:
        raise AnalogError("building the native kernels needs a C++17 compiler: install g++ (or set CXX)")
    try:
        include = headers.include_dir(cache_dir())
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AnalogError(f"cannot write the native kernels into {cache_dir()}: {e.strerror}; "
                          "set ANALOG_ONNX_CACHE to a writable folder") from None
    with atomic_outputs(target.parent / RECORD_NAME, target, force=True) as (record, scratch):
        compile_library(cxx, include, scratch)
        problem = load_problem(scratch)
        if problem:
            raise AnalogError(f"the freshly built native kernels do not load: {problem}")
        record.write_text(json.dumps(_record(scratch)))
    return target, True


def compile_library(compiler: str, include: Path, output: Path, extra_flags: Sequence[str] = ()) -> None:
    """Compile the sources and the generated header into the shared library ``output``
    (``extra_flags`` after the usual ones: ``tools/fuzz_sanitized.py`` adds the sanitizers)."""
    with tempfile.TemporaryDirectory() as generated:
        from analog_onnx.ops.native.generate import HEADER_NAME

        (Path(generated) / HEADER_NAME).write_text(generated_header())
        command = [compiler, *compiler_flags(), *extra_flags, "-I", generated, "-I", str(include),
                   *map(str, translation_units()), "-o", str(output)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        errors = [line for line in result.stderr.splitlines() if "error" in line] or result.stderr.splitlines()
        raise AnalogError(f"compiling the native kernels failed: {(errors or ['no output'])[0]}")


def load_problem(path: Path) -> str | None:
    """Why onnxruntime cannot register the library at ``path`` (None: it can)."""
    try:
        ort.SessionOptions().register_custom_ops_library(str(path))
    except Exception as error:  # onnxruntime raises its own exception types
        return first_line(error)
    return None


def kernel_status() -> KernelStatus:
    """Whether the library for this onnxruntime is built, and what it provides."""
    path = library_path()
    status = KernelStatus(built=path.is_file(), library=str(path), onnxruntime=ort.__version__)
    if not status.built:
        return status
    status.error = untrusted_folder(path) or damage(path)
    if status.error:  # never load it: a truncated library crashes the process
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
