"""The source code a study cell's result depends on, as one hash that goes into the cell's key.

Settings alone do not decide a result: a fix in the trainer or in a kernel changes it too. So a
cell's key also holds the hash of its code: every ``analog_onnx`` module its entry module imports,
directly or through others (each ``import`` statement, also those inside functions, read from
the files, not run), their packages' ``__init__`` files, and the native kernels' C++ sources
when the native library is among them. A change to that code gives new keys: the cells it can
change are redone, the others are kept, and an old result is never reused silently.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

PACKAGE = "analog_onnx"
ROOT = Path(__file__).resolve().parents[1]  # the analog_onnx package folder
NATIVE = "analog_onnx.ops.native"
NATIVE_SOURCES = ("*.cc", "*.h")
TRAIN_ENTRY = "analog_onnx.train.trainer"  # what a training cell runs
EVALUATE_ENTRY = "analog_onnx.evaluate.sweep"  # what an evaluation cell runs (`evaluate`; the package
# itself imports its names lazily, so its own file names none of them)


def _path(module: str, root: Path) -> Path | None:
    """The file of ``module`` under ``root`` (the package folder), or None if it is not ours."""
    parts = module.split(".")
    if parts[0] != root.name:
        return None
    base = root.joinpath(*parts[1:])
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path, module: str) -> set[str]:
    """Every module name an import statement of ``path`` may load (``from a import b``: a and a.b)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def source_files(entry: str, root: Path = ROOT) -> list[Path]:
    """The files ``entry`` runs: its import closure within the package, parents included, sorted."""
    seen: dict[str, Path] = {}
    todo = [entry]
    while todo:
        module = todo.pop()
        parts = module.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a and a.b first
            name = ".".join(parts[:i])
            path = _path(name, root)
            if path is not None and name not in seen:
                seen[name] = path
                todo.extend(_imports(path, name))
    files = set(seen.values())
    if NATIVE in seen:
        native = _path(NATIVE, root)
        assert native is not None
        files.update(f for pattern in NATIVE_SOURCES for f in native.parent.glob(pattern))
    return sorted(files)


@functools.cache
def code_hash(entry: str, root: Path = ROOT) -> str:
    """A short hash of the files ``entry`` runs (their paths within the package and contents)."""
    digest = hashlib.sha256()
    for path in source_files(entry, root):
        digest.update(path.relative_to(root.parent).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]
