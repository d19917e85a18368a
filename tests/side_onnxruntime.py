"""Side virtualenvs with other onnxruntime releases, made once and cached, for portability tests.

A transformed model must load and run on every onnxruntime that ``pyproject.toml`` allows, not
only on the one installed here. ``side_python(spec)`` returns the python of a virtualenv holding
that onnxruntime (and nothing of ours); ``run_side(python, model, feeds)`` runs a model there.
The venvs live under the per-user cache (``analog_onnx.cache.cache_dir()``/test-venvs), keyed by
the requirement and this python's version; a lock keeps parallel test workers from building one
twice. Without a package index the venv cannot be made: the caller skips, except in CI.
"""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import tomllib

from analog_onnx.cache import cache_dir

ROOT = Path(__file__).resolve().parents[1]
RUNNER = Path(__file__).with_name("side_runner.py")
NUMPY_PIN = "numpy<2.3"  # old onnxruntime wheels are built against numpy 2.0-2.2
INSTALL_TIMEOUT_S = 900


def oldest_onnxruntime() -> str:
    """The lowest onnxruntime release ``pyproject.toml`` allows, e.g. ``1.20``."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        found = re.fullmatch(r"onnxruntime\s*>=\s*([\d.]+)", requirement.strip())
        if found:
            return found.group(1)
    raise AssertionError("pyproject.toml has no 'onnxruntime>=X' dependency")


def side_python(series: str) -> tuple[Path | None, str]:
    """The python of a cached venv with the newest onnxruntime ``series`` (e.g. ``1.20``) release,
    and a reason when it cannot be made (None, reason)."""
    tag = f"onnxruntime-{series}-py{sys.version_info.major}{sys.version_info.minor}"
    home = cache_dir() / "test-venvs" / tag
    python = home / "bin" / "python"
    ready = home / ".ready"
    home.parent.mkdir(parents=True, exist_ok=True)
    with open(home.parent / f"{tag}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if ready.is_file():
            return python, ""
        venv.create(home, clear=True, with_pip=True)
        command = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--retries", "2",
                   "--timeout", "30", "--only-binary=:all:", f"onnxruntime=={series}.*", NUMPY_PIN]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return None, f"pip install onnxruntime=={series}.* took over {INSTALL_TIMEOUT_S} s"
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            return None, f"cannot install onnxruntime=={series}.* into a side venv: {last}"
        ready.write_text(side_version(python) + "\n")
        return python, ""


def side_version(python: Path) -> str:
    """The onnxruntime version installed in a side venv."""
    command = [str(python), "-c", "import onnxruntime; print(onnxruntime.__version__)"]
    return subprocess.run(command, capture_output=True, text=True, check=True, timeout=120).stdout.strip()


def run_side(python: Path, model: Path, feeds: dict[str, np.ndarray], work: Path) -> list[np.ndarray]:
    """Outputs of ``model`` for ``feeds`` under the side venv's onnxruntime (function bodies only)."""
    inputs, outputs = work / f"{model.stem}.in.npz", work / f"{model.stem}.out.npz"
    np.savez(inputs, **feeds)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing of ours over there
    done = subprocess.run([str(python), str(RUNNER), str(model), str(inputs), str(outputs)],
                          capture_output=True, text=True, timeout=300, env=env)
    if done.returncode != 0:
        raise AssertionError(f"{model.name} fails under the side onnxruntime:\n{done.stderr[-3000:]}")
    with np.load(outputs) as result:
        return [result[f"out{i}"] for i in range(len(result.files))]
